//! One SMTP session (RFC 5321) from banner to QUIT: the command state machine, STARTTLS,
//! the relay rules at RCPT and the durable commit after DATA.
//!
//! Every reply carries an enhanced status code (RFC 2034 / 3463). Bad input gets a clear reply
//! and counts as an error. As Postfix does (`smtpd_soft_error_limit`, `smtpd_error_sleep_time`,
//! `smtpd_hard_error_limit`): past `limits.soft_errors` errors each error reply waits
//! `limits.error_sleep_time`, which slows down harvesters and brute force; at
//! `limits.max_errors` the session ends with `421 4.7.0`. The defaults (10, 1s, 20) leave room
//! for a relay audit such as nmap's smtp-open-relay (16 refused tries) to finish and report.
//!
//! One refusal is not an error: `452 4.5.3` to a RCPT past `limits.max_recipients`. RFC 5321
//! 4.5.3.1.8 and 3.3 ask the client to send those recipients in a later transaction, and the
//! transaction with the first `max_recipients` goes on to DATA; counting them would close a
//! well-behaved client that pipelines 150 RCPTs as an error storm. As Postfix
//! (`smtpd_recipient_overshoot_limit`) they are bounded on their own: at
//! `limits.recipient_overshoot_limit` of them in a session, `421 4.7.0` and close.

use super::connection::{ConnError, Connection, Line};
use super::received::{received_header, ReceivedFields};
use super::{hops, relay, tvungen, SessionContext};
use crate::audit::AuditEvent;
use crate::config::{ListenerConfig, Role};
use crate::domain::Domain;
use crate::metrics::RejectReason;
use crate::queue::message::{
    self, BodyType, DsnNotify, MessageMeta, NewMessage, Reception, Recipient,
};
use crate::queue::{QueueId, StoreError};
use crate::smtp::command::{self, Command, MailFrom, RcptTo};
use crate::smtp::data::{DataDecoder, DataOutcome};
use crate::smtp::Address;
use crate::smtp::{Capabilities, Reply};
use crate::tls::{ClientCertificate, TlsInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// What the session loop does after a command.
enum Flow {
    Continue,
    Close,
}

/// A transaction between MAIL and the end of DATA.
struct Transaction {
    mail: MailFrom,
    recipients: Vec<AcceptedRecipient>,
}

/// A recipient that passed the RCPT checks, with `<Postmaster>` resolved to an address.
struct AcceptedRecipient {
    address: Address,
    rcpt: RcptTo,
}

/// One SMTP session on an inbound or outbound listener: the command loop, STARTTLS, the
/// per-phase checks and the durable commit before `250` (S5).
pub struct Session {
    conn: Connection,
    ctx: Arc<SessionContext>,
    /// The listener's place in `[[listener]]` order: which STARTTLS acceptor it uses.
    listener_index: usize,
    listener: ListenerConfig,
    peer: SocketAddr,
    /// The HELO/EHLO argument; `None` until the client greets (and again after STARTTLS).
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    transaction: Option<Transaction>,
    errors: u32,
    /// An error reply past `limits.soft_errors` is waiting to be slowed down.
    error_delay_due: bool,
    /// RCPTs refused for going past `limits.max_recipients` in this session (not errors;
    /// bounded by `limits.recipient_overshoot_limit`).
    recipient_overshoot: usize,
    accepted: u32,
}

impl Session {
    /// A session for a connection accepted from `peer` on `listener`, the one at
    /// `listener_index` in `[[listener]]` order; [`Session::run`] drives it.
    pub fn new(
        conn: Connection,
        ctx: Arc<SessionContext>,
        listener_index: usize,
        listener: ListenerConfig,
        peer: SocketAddr,
    ) -> Session {
        Session {
            conn,
            ctx,
            listener_index,
            listener,
            peer,
            helo: None,
            esmtp: false,
            tls: None,
            transaction: None,
            errors: 0,
            error_delay_due: false,
            recipient_overshoot: 0,
            accepted: 0,
        }
    }

    /// Buffers `reply`; a 4xx or 5xx counts as an error (see the module doc).
    fn reply(&mut self, reply: Reply) {
        if reply.code >= 400 {
            self.errors += 1;
            if self.errors > self.ctx.config.limits.soft_errors {
                self.error_delay_due = true;
            }
        }
        self.reply_not_an_error(reply);
    }

    /// Buffers a refusal that is not the client's error: it counts towards no error limit and
    /// is never slowed down (only `452 4.5.3` past `limits.max_recipients`, see the module doc).
    fn reply_not_an_error(&mut self, reply: Reply) {
        reply.write_to(self.conn.output());
    }

    /// The `421 4.7.0` that ends a session at one of its bounds, with the reason logged:
    /// `limits.max_errors` errors (Postfix's `smtpd_hard_error_limit`) or
    /// `limits.recipient_overshoot_limit` RCPTs past `limits.max_recipients` (Postfix's
    /// `smtpd_recipient_overshoot_limit`). RFC 5321 3.8: 421 may answer any command.
    fn session_bound_reached(&self) -> Option<(Reply, &'static str)> {
        let limits = &self.ctx.config.limits;
        if self.errors >= limits.max_errors {
            let reply = Reply::new(421, "4.7.0", "Too many errors, closing connection");
            return Some((reply, "too many errors"));
        }
        if self.recipient_overshoot >= limits.recipient_overshoot_limit {
            let reply = Reply::new(
                421,
                "4.7.0",
                "Too many recipients past the limit, closing connection",
            );
            return Some((reply, "too many recipients"));
        }
        None
    }

    /// Holds back an error reply past the soft limit (it is still buffered: replies are sent
    /// when the session next reads) for `limits.error_sleep_time`.
    async fn slow_down_after_error(&mut self) {
        if !std::mem::take(&mut self.error_delay_due) {
            return;
        }
        let sleep = self.ctx.config.limits.error_sleep_time;
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            // The next read sees the shutdown and says so.
            _ = self.ctx.shutdown.cancelled() => {}
        }
    }

    /// Runs the session to its end. Never panics on client input; every exit path logs once.
    pub async fn run(mut self) {
        let limits = self.ctx.config.limits.clone();
        // RFC 5321 4.2 / 4.3.1: the greeting is "220 <domain> [text]"; RFC 2034 3 leaves the
        // enhanced code out of it, so a client that reads the host name from the banner gets
        // the host name (review finding: it read "2.0.0").
        let banner = format!("{} ESMTP tlsgate", self.ctx.config.server.hostname);
        self.reply(Reply::new(220, "", banner));
        let end = loop {
            let line = tokio::select! {
                line = self.conn.read_line(limits.max_line_length, limits.command_timeout) => line,
                _ = self.ctx.shutdown.cancelled() => {
                    self.reply(Reply::new(421, "4.3.2", "Service shutting down, try again later"));
                    break "shutdown";
                }
            };
            let flow = match line {
                Ok(Line::Complete(line)) => match command::parse_command(&line) {
                    Ok(cmd) => self.handle(cmd).await,
                    Err(e) => {
                        self.reply(e.reply());
                        Flow::Continue
                    }
                },
                Ok(Line::TooLong) => {
                    self.reply(Reply::new(500, "5.5.6", "Line too long"));
                    Flow::Continue
                }
                Ok(Line::Unterminated) => {
                    // RFC 5321 4.5.3.1.4 / 4.5.3.1.9: the line is refused at the limit; with
                    // no line end there is no next command to find, so the session ends.
                    self.reply(Reply::new(
                        500,
                        "5.5.6",
                        format!(
                            "Line too long: no line end within {} octets, closing connection",
                            limits.max_line_length
                        ),
                    ));
                    break "line too long";
                }
                Err(ConnError::Timeout) => {
                    self.reply(Reply::new(
                        421,
                        "4.4.2",
                        "Timeout waiting for a command, closing",
                    ));
                    break "timeout";
                }
                Err(ConnError::Closed) => break "client closed",
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "read failed");
                    break "I/O error";
                }
            };
            if let Flow::Close = flow {
                break "closed";
            }
            self.slow_down_after_error().await;
            if let Some((closing, end)) = self.session_bound_reached() {
                self.reply(closing);
                break end;
            }
        };
        self.conn.close(limits.command_timeout).await;
        let tls_used = if self.tls.is_some() { "yes" } else { "no" };
        self.ctx
            .metrics
            .connections
            .with_label_values(&[self.role_label(), tls_used])
            .inc();
        tracing::info!(
            peer = %self.peer,
            listener = %self.listener.role,
            helo = self.helo.as_deref().unwrap_or(""),
            tls = self.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
            messages = self.accepted,
            errors = self.errors,
            end,
            "session ended"
        );
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Helo(name) => self.greet(name, false),
            Command::Ehlo(name) => self.greet(name, true),
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt),
            Command::Data => return self.data().await,
            Command::Bdat { .. } => self.reply(Reply::new(
                502,
                "5.5.1",
                "BDAT not supported here, use DATA",
            )),
            Command::Rset => {
                self.transaction = None;
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            // RFC 5321 3.5.3: 252 says "cannot verify, but will try delivery"; we never
            // confirm addresses (no harvesting).
            Command::Vrfy(_) => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => self.reply(Reply::new(502, "5.5.1", "EXPN is disabled")),
            Command::Help(_) => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
            )),
            Command::StartTls => return self.starttls().await,
        }
        Flow::Continue
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            size: self.ctx.config.server.max_message_size,
            starttls: self.tls.is_none() && self.ctx.tls_acceptor(self.listener_index).is_some(),
            // RFC 8689 2: REQUIRETLS is offered only on a TLS-protected session.
            requiretls: self.tls.is_some(),
            chunking: false,
        }
    }

    fn greet(&mut self, name: String, esmtp: bool) {
        // RFC 5321 4.1.4: EHLO/HELO resets the transaction state.
        self.transaction = None;
        let reply = if esmtp {
            self.capabilities()
                .ehlo_reply(&self.ctx.config.server.hostname, &name)
        } else {
            Reply::new(250, "2.0.0", self.ctx.config.server.hostname.clone())
        };
        self.helo = Some(name);
        self.esmtp = esmtp;
        self.reply(reply);
    }

    fn mail(&mut self, mail: MailFrom) {
        if self.helo.is_none() {
            return self.reply(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
        }
        if self.transaction.is_some() {
            return self.reply(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.listener.require_tls && self.tls.is_none() {
            self.ctx
                .metrics
                .reject(self.role_label(), RejectReason::TlsRequired);
            return self.reply(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
        }
        // S2: a `client_cert = "required"` listener refuses a client without a verified
        // certificate before the transaction starts.
        if let Err(refusal) = relay::check_client(&self.ctx.config, &self.listener, &self.client())
        {
            let domain = mail
                .sender
                .address()
                .map(|a| a.domain().to_string())
                .unwrap_or_default();
            return self.refuse_relay(refusal, "", &domain);
        }
        let has_params = mail.size.is_some()
            || mail.body.is_some()
            || mail.smtputf8
            || mail.ret.is_some()
            || mail.envid.is_some()
            || mail.requiretls;
        if has_params && !self.esmtp {
            return self.reply(Reply::new(
                555,
                "5.5.4",
                "MAIL parameters need EHLO, not HELO",
            ));
        }
        if let Some(domain) = self.listed_plaintext_sender(&mail) {
            self.count_plaintext_refusal(&domain, "mail_from");
            return self.reply(tvungen::envelope_refusal(&domain));
        }
        if mail.requiretls && self.tls.is_none() {
            // RFC 8689 4.1
            return self.reply(Reply::new(530, "5.7.10", "REQUIRETLS needs a TLS session"));
        }
        let max = self.ctx.config.server.max_message_size;
        if mail.size.is_some_and(|size| size > max) {
            return self.reply(Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds the limit of {max} bytes"),
            ));
        }
        // Refuse before the client sends the data, not after (452 4.3.1, RFC 5321 4.5.3.1.10):
        // a full file system (read at most once a second, issue 16 item 7), or a queue that
        // cannot take mail (issue 16 item 4).
        let server = &self.ctx.config.server;
        if let Err(refusal) = self
            .ctx
            .committer
            .accepts(self.ctx.free_space.available(), server.min_free_space)
        {
            tracing::warn!(reason = %refusal.reason, "queue cannot take mail, refusing MAIL");
            return self.reply(if refusal.disk_full {
                Reply::new(452, "4.3.1", "Insufficient system storage")
            } else {
                Reply::new(
                    451,
                    "4.3.0",
                    "Queue temporarily unavailable, try again later",
                )
            });
        }
        self.transaction = Some(Transaction {
            mail,
            recipients: Vec::new(),
        });
        self.reply(Reply::new(250, "2.1.0", "Sender ok"));
    }

    /// The client as the relay rules see it (S6, S2).
    fn client(&self) -> relay::Client<'_> {
        relay::Client {
            ip: self.peer.ip(),
            tls: self.tls.is_some(),
            certificate: self
                .tls
                .as_ref()
                .and_then(|t| t.client_certificate.as_ref()),
        }
    }

    /// A relay refusal (S6) is counted, logged, audited and answered; `recipient` is empty
    /// when the client itself is refused at MAIL, `domain` is then the sender's.
    fn refuse_relay(&mut self, refusal: relay::RelayRefusal, recipient: &str, domain: &str) {
        let role = self.listener.role;
        self.ctx.metrics.reject(self.role_label(), refusal.reason());
        tracing::info!(
            peer = %self.peer,
            listener = %role,
            recipient,
            refusal = refusal.label(),
            "relay access denied"
        );
        crate::audit::submit(
            &self.ctx.audit,
            AuditEvent::RelayRefused {
                peer: self.peer.to_string(),
                domain: domain.to_string(),
                listener: role.to_string(),
                reason: refusal.label().into(),
            },
        );
        self.reply(refusal.reply());
    }

    fn rcpt(&mut self, rcpt: RcptTo) {
        let config = self.ctx.config.clone();
        let Some(tx) = self.transaction.as_ref() else {
            return self.reply(Reply::new(503, "5.5.1", "Need MAIL before RCPT"));
        };
        let (count, smtputf8) = (tx.recipients.len(), tx.mail.smtputf8);
        if count >= config.limits.max_recipients {
            // RFC 5321 4.5.3.1.8: 452, and the client sends the rest in a later transaction;
            // not an error (see the module doc).
            self.recipient_overshoot += 1;
            self.ctx
                .metrics
                .reject(self.role_label(), RejectReason::TooManyRecipients);
            return self.reply_not_an_error(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        // <Postmaster> without a domain means ours (RFC 5321 4.5.1).
        let default_domain = config
            .inbound
            .local_domains
            .first()
            .cloned()
            .or_else(|| crate::domain::Domain::parse(&config.server.hostname).ok());
        let Some(default_domain) = default_domain else {
            return self.reply(Reply::new(550, "5.1.1", "No postmaster here"));
        };
        let address = command::recipient_address(&rcpt.recipient, &default_domain);
        if !address.is_ascii() && !smtputf8 {
            return self.reply(command::CommandError::NeedsSmtputf8.reply());
        }
        let checked = relay::check_recipient(&config, &self.listener, &self.client(), &address);
        if let Err(refusal) = checked {
            let domain = address.domain().to_string();
            return self.refuse_relay(refusal, &address.to_string(), &domain);
        }
        if let Some(tx) = self.transaction.as_mut() {
            tx.recipients.push(AcceptedRecipient { address, rcpt });
        }
        self.reply(Reply::new(250, "2.1.5", "Recipient ok"));
    }

    async fn data(&mut self) -> Flow {
        let ready = match &self.transaction {
            None => Err(Reply::new(503, "5.5.1", "Need MAIL before DATA")),
            Some(tx) if tx.recipients.is_empty() => {
                Err(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => Ok(()),
        };
        if let Err(reply) = ready {
            self.reply(reply);
            return Flow::Continue;
        }
        self.reply(Reply::new(354, "2.0.0", "End data with <CR><LF>.<CR><LF>"));

        let limits = &self.ctx.config.limits;
        let max = usize::try_from(self.ctx.config.server.max_message_size).unwrap_or(usize::MAX);
        let declared = self
            .transaction
            .as_ref()
            .and_then(|tx| tx.mail.size)
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(64 * 1024);
        let mut body = Vec::with_capacity(declared.min(max));
        let mut decoder = DataDecoder::new(max);
        let deadline = Instant::now() + limits.data_total_timeout;
        let read = self
            .conn
            .read_data(&mut decoder, &mut body, limits.data_timeout, deadline)
            .await;
        // Whatever happens now, this transaction is over (RFC 5321 4.1.1.4).
        let Some(tx) = self.transaction.take() else {
            return Flow::Close;
        };
        match read {
            Ok(()) => {}
            Err(ConnError::Timeout) => {
                self.reply(Reply::new(421, "4.4.2", "Timeout during DATA, closing"));
                return Flow::Close;
            }
            Err(_) => return Flow::Close,
        }
        match decoder.outcome() {
            DataOutcome::Ok => {}
            DataOutcome::TooLarge => {
                self.ctx
                    .metrics
                    .reject(self.role_label(), RejectReason::TooLarge);
                self.reply(Reply::new(
                    552,
                    "5.3.4",
                    format!("Message exceeds the size limit of {max} bytes"),
                ));
                return Flow::Continue;
            }
            DataOutcome::BareLineEnding => {
                // SMTP smuggling defence: a message whose data holds a bare CR or LF is
                // refused whole, so no receiver can disagree with us about where it ended.
                tracing::warn!(peer = %self.peer, "message with bare CR or LF refused");
                self.ctx
                    .metrics
                    .reject(self.role_label(), RejectReason::BareLineEnding);
                self.reply(Reply::new(
                    550,
                    "5.6.0",
                    "Message contains bare CR or LF characters; lines must end with CRLF",
                ));
                return Flow::Continue;
            }
        }
        let hop_limit = self.ctx.config.limits.hop_count_limit;
        if let Err(refused) = hops::check(&body, hop_limit) {
            // RFC 5321 6.3: never queued, so a loop ends here instead of going round again.
            tracing::warn!(peer = %self.peer, listener = %self.listener.role,
                from = tx.mail.sender.address().map(|a| a.to_string()).unwrap_or_default(),
                received = refused.received, limit = hop_limit,
                "message refused: too many hops (mail loop?)");
            self.ctx
                .metrics
                .reject(self.role_label(), RejectReason::TooManyHops);
            self.reply(refused.reply());
            return Flow::Continue;
        }
        if let Some(domain) = self.listed_plaintext_header_from(&body) {
            self.count_plaintext_refusal(&domain, "header_from");
            self.reply(tvungen::header_refusal(&domain));
            return Flow::Continue;
        }
        let body = match self.authenticate(&tx, body).await {
            Ok(body) => body,
            Err(refusal) => {
                self.reply(refusal);
                return Flow::Continue;
            }
        };
        let reply = self.commit(tx, body).await;
        self.reply(reply);
        Flow::Continue
    }

    /// D4: inbound mail is checked (SPF, DKIM, DMARC, ARC) and stamped with
    /// `Authentication-Results`, or refused as the policy says; outbound mail from a domain
    /// with a DKIM key is signed.
    async fn authenticate(&self, tx: &Transaction, body: Vec<u8>) -> Result<Vec<u8>, Reply> {
        let sender = tx.mail.sender.address().map(|a| a.to_string());
        match self.listener.role {
            Role::Inbound => {
                let Some(verifier) = &self.ctx.auth else {
                    return Ok(body);
                };
                let outcome = verifier
                    .check(crate::auth::CheckInput {
                        client_ip: crate::inbound::client_override::auth_client_ip(self.peer),
                        helo: self.helo.as_deref().unwrap_or(""),
                        mail_from: sender.as_deref(),
                        message: &body,
                    })
                    .await;
                self.count_auth(&outcome);
                if let Some(reports) = &self.ctx.dmarc_reports {
                    // RFC 7489 7.2: the evaluation and what we do with the message.
                    reports.record(self.peer.ip(), &outcome);
                }
                tracing::info!(peer = %self.peer, from = sender.as_deref().unwrap_or(""),
                    spf = outcome.spf.result.as_str(), dmarc = outcome.dmarc.result.as_str(),
                    dkim = %outcome.dkim.iter().map(|d| d.result.as_str()).collect::<Vec<_>>().join(","),
                    action = outcome.action.label(), "sender authentication");
                match &outcome.action {
                    crate::auth::AuthAction::Reject {
                        code,
                        enhanced,
                        text,
                    }
                    | crate::auth::AuthAction::TempFail {
                        code,
                        enhanced,
                        text,
                    } => Err(Reply::new(*code, enhanced, text.clone())),
                    _ => Ok(verifier.stamp(&body, &outcome)),
                }
            }
            Role::Outbound => {
                let Some(domain) = tx.mail.sender.address().map(|a| a.domain().clone()) else {
                    return Ok(body);
                };
                let Some(signer) = self.ctx.dkim.get(&domain) else {
                    return Ok(body);
                };
                match signer.sign(&body) {
                    Ok(signed) => Ok(signed),
                    Err(e) => {
                        // Unsigned mail still goes out; partners' DMARC may then rely on SPF.
                        tracing::error!(domain = %domain, error = %e, "DKIM signing failed");
                        Ok(body)
                    }
                }
            }
        }
    }

    fn count_auth(&self, outcome: &crate::auth::AuthOutcome) {
        let m = &self.ctx.metrics.auth_results;
        m.with_label_values(&["spf", outcome.spf.result.as_str()])
            .inc();
        for d in &outcome.dkim {
            m.with_label_values(&["dkim", d.result.as_str()]).inc();
        }
        m.with_label_values(&["dmarc", outcome.dmarc.result.as_str()])
            .inc();
        if let Some(arc) = &outcome.arc {
            m.with_label_values(&["arc", arc.result.as_str()]).inc();
        }
    }

    /// T5: a refusal is logged at warn, counted and audited.
    fn count_plaintext_refusal(&self, domain: &Domain, stage: &str) {
        tracing::warn!(peer = %self.peer, domain = %domain, stage,
            "plaintext mail from a listed domain refused (T5)");
        self.ctx.metrics.plaintext_refused.inc();
        self.ctx
            .metrics
            .reject(self.role_label(), RejectReason::PlaintextListed);
        crate::audit::submit(
            &self.ctx.audit,
            AuditEvent::PlaintextRefused {
                peer: self.peer.ip().to_string(),
                domain: domain.to_string(),
                stage: stage.to_string(),
            },
        );
    }

    fn role_label(&self) -> &'static str {
        match self.listener.role {
            Role::Inbound => "inbound",
            Role::Outbound => "outbound",
        }
    }

    /// T5 applies on inbound listeners, to plaintext sessions, when configured (default on).
    fn t5_applies(&self) -> bool {
        self.listener.role == Role::Inbound
            && self.tls.is_none()
            && self.ctx.config.inbound.refuse_plaintext_from_listed
    }

    fn listed_plaintext_sender(&self, mail: &MailFrom) -> Option<Domain> {
        if !self.t5_applies() {
            return None;
        }
        let domain = mail.sender.address()?.domain().clone();
        self.ctx
            .domain_list
            .current()
            .is_listed(&domain)
            .then_some(domain)
    }

    fn listed_plaintext_header_from(&self, body: &[u8]) -> Option<Domain> {
        if !self.t5_applies() {
            return None;
        }
        let list = self.ctx.domain_list.current();
        tvungen::header_from_domains(body)
            .into_iter()
            .find(|d| list.is_listed(d))
    }

    async fn commit(&mut self, tx: Transaction, body: Vec<u8>) -> Reply {
        let id = QueueId::generate();
        let single_recipient = match tx.recipients.as_slice() {
            [only] => Some(only.address.to_string()),
            _ => None,
        };
        let helo = self.helo.clone().unwrap_or_default();
        let received = received_header(&ReceivedFields {
            helo: &helo,
            client_ip: self.peer.ip(),
            hostname: &self.ctx.config.server.hostname,
            esmtp: self.esmtp,
            tls: self.tls.as_ref(),
            queue_id: id.as_str(),
            single_recipient: single_recipient.as_deref(),
            when: SystemTime::now(),
        });
        let size = body.len() as u64;
        let message_id =
            crate::smtp::headers::message_id(&body).unwrap_or_else(|| "none".to_string());
        let recipient_list: Vec<String> = tx
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        let meta = MessageMeta {
            id: id.clone(),
            sender: tx.mail.sender.address().map(|a| a.to_string()),
            recipients: tx.recipients.iter().map(to_queue_recipient).collect(),
            ret: tx.mail.ret,
            envid: tx.mail.envid.clone(),
            body_type: tx.mail.body.unwrap_or(BodyType::SevenBit),
            smtputf8: tx.mail.smtputf8,
            requiretls: tx.mail.requiretls,
            reception: Reception {
                client_ip: self.peer.ip(),
                helo,
                role: self.listener.role,
                tls: self.tls.clone(),
                received_at: message::unix_now(),
            },
            received_header: received,
            size,
        };
        let sender = meta.sender.clone().unwrap_or_default();
        // A commit normally takes milliseconds; one that hangs (a stuck store) must not hold the
        // client forever. It then gets a 4xx and retries; if the write completes after all,
        // the message is sent twice, never lost.
        let limit = self.ctx.config.limits.data_timeout;
        let committed = self
            .ctx
            .committer
            .commit_within(NewMessage { meta, body }, limit)
            .await;
        match committed {
            Ok(()) => {
                self.accepted += 1;
                self.ctx
                    .metrics
                    .messages_accepted
                    .with_label_values(&[self.role_label()])
                    .inc();
                // One line per accepted message (issue 14 item 3, Postfix's `cleanup:
                // message-id=` line): what an administrator searches for.
                tracing::info!(
                    queue_id = %id,
                    message_id = %message_id,
                    peer = %self.peer,
                    listener = %self.listener.role,
                    from = %sender,
                    nrcpt = recipient_list.len(),
                    to = %recipient_list.join(","),
                    size,
                    tls = self.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
                    tls_cipher = self.tls.as_ref().map(|t| t.cipher.as_str()).unwrap_or("none"),
                    "message queued"
                );
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "queue commit failed, message refused");
                self.ctx.metrics.store_errors.inc();
                self.ctx
                    .metrics
                    .reject(self.role_label(), RejectReason::StoreError);
                store_error_reply(&e)
            }
        }
    }

    async fn starttls(&mut self) -> Flow {
        let Some(acceptor) = self.ctx.tls_acceptor(self.listener_index) else {
            self.reply(Reply::new(502, "5.5.1", "STARTTLS not available"));
            return Flow::Continue;
        };
        if self.tls.is_some() {
            self.reply(Reply::new(503, "5.5.1", "TLS already active"));
            return Flow::Continue;
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        let limit = self.ctx.config.limits.tls_handshake_timeout;
        match self.conn.start_tls(&acceptor, limit).await {
            Ok(discarded) => {
                if discarded > 0 {
                    tracing::warn!(
                        peer = %self.peer,
                        bytes = discarded,
                        "plaintext pipelined after STARTTLS discarded (command injection attempt)"
                    );
                }
                // RFC 3207 4.2: forget everything learned before TLS, the client must EHLO again.
                self.helo = None;
                self.esmtp = false;
                self.transaction = None;
                self.tls = self.conn.tls_state().map(|state| {
                    let mut info = TlsInfo::from_connection(state);
                    // S2: only a listener with `client_ca` asks for (and verifies) one.
                    if self.listener.client_auth.is_some() {
                        info.client_certificate = ClientCertificate::of_peer(state);
                    }
                    info
                });
                self.log_client_certificate();
                Flow::Continue
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "STARTTLS handshake failed");
                Flow::Close
            }
        }
    }
}

impl Session {
    /// S2: on a listener with `client_ca`, the outcome of client authentication is logged once
    /// per session, right after the handshake (subject, issuer and serial when verified).
    fn log_client_certificate(&self) {
        if self.listener.client_auth.is_none() {
            return;
        }
        match self
            .tls
            .as_ref()
            .and_then(|t| t.client_certificate.as_ref())
        {
            Some(cert) => tracing::info!(
                peer = %self.peer,
                listener = %self.listener.role,
                subject = %cert.subject,
                issuer = %cert.issuer,
                serial = %cert.serial,
                "client certificate verified"
            ),
            None => tracing::info!(
                peer = %self.peer,
                listener = %self.listener.role,
                "no client certificate presented"
            ),
        }
    }
}

fn to_queue_recipient(accepted: &AcceptedRecipient) -> Recipient {
    let rcpt = &accepted.rcpt;
    let n = &rcpt.notify;
    Recipient {
        address: accepted.address.to_string(),
        notify: if n.explicit {
            DsnNotify {
                never: n.never,
                success: n.success,
                failure: n.failure,
                delay: n.delay,
            }
        } else {
            DsnNotify::default()
        },
        orcpt: rcpt
            .orcpt
            .as_ref()
            .map(|o| (o.addr_type.clone(), o.address.clone())),
    }
}

/// S5: a store failure is never answered with 250; the client keeps the message and retries.
fn store_error_reply(e: &StoreError) -> Reply {
    if matches!(e, StoreError::Stalled) {
        // Issue 16 item 2: the watchdog gave up on the committer; the relay restarts.
        Reply::new(451, "4.3.0", "Queue stalled, try again later")
    } else if e.is_disk_full() {
        Reply::new(452, "4.3.1", "Insufficient system storage")
    } else {
        Reply::new(
            452,
            "4.3.1",
            "Queue temporarily unavailable, try again later",
        )
    }
}
