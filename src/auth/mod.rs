//! Inbound sender authentication (issue 5): SPF, DKIM, DMARC and ARC over mail-auth, the
//! `Authentication-Results` header that records them (RFC 8601), and the action the
//! configured [`AuthPolicy`] takes on the results.
//!
//! Order of use in an inbound session, after the end of DATA:
//! 1. [`Verifier::check`] on the message as received (DKIM must see the original bytes);
//! 2. act on [`AuthOutcome::action`] (reply 550 / 451, or accept);
//! 3. on accept, [`Verifier::stamp`] the message: it removes every `Authentication-Results`
//!    field claiming our authserv-id ([`strip_our_authentication_results`]) and prepends
//!    ours (and the tag header, when the action is [`AuthAction::Tag`]).
//!
//! DNS goes through the relay's one hickory resolver ([`crate::dns::HickoryResolver`], on
//! `dns.nameservers`, shared with delivery); hickory caches answers for their TTL and SPF,
//! DKIM and ARC run concurrently. The whole check is bounded by one deadline: whatever has not
//! finished by then is recorded as `temperror`, so a slow DNS server cannot hold a session.
//! SPF is our own ([`spf`], RFC 7208 as its test suite checks it); each of its queries has a
//! bound of its own well under the deadline ([`spf::QUERY_TIMEOUT`], issue 17 item 2), and
//! DMARC is fed its result.
//!
//! Configuration (parsed by `config`; see config/tlsgate.example.toml), with the defaults:
//!
//! ```toml
//! [inbound.auth]
//! enabled = true                     # check on inbound listeners
//! timeout = "10s"                    # Verifier timeout: bound of one whole check
//! dmarc_reject = "reject"            # accept | tag | reject   (550 5.7.1)
//! dmarc_quarantine = "tag"           # accept | tag | reject
//! spf_fail_without_dmarc = "tag"     # accept | tag | reject   (550 5.7.23)
//! tag_header = "X-Tlsgate-Quarantine"
//!
//! [[outbound.dkim]]                  # one per sender domain; none: no signing (default)
//! domain = "example.no"
//! selector = "s1"
//! key = "/etc/tlsgate/dkim.pem"      # PKCS#8 RSA or Ed25519, or PKCS#1 RSA
//! headers = []                       # empty: DEFAULT_SIGNED_HEADERS
//! ```

mod header;
mod sign;
pub mod spf;
mod strip;

pub use sign::{DkimAlgorithm, OutboundSigner, SignerError, DEFAULT_SIGNED_HEADERS};
pub use strip::strip_our_authentication_results;

/// The configured actions ([`AuthPolicy::decide`] below applies them).
pub use crate::config::{AuthPolicy, PolicyAction};

use crate::dns::{DnsError, HickoryResolver};

use mail_auth::dkim::Signature;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// One result value of RFC 8601 §2.7 (the subset SPF, DKIM, DMARC and ARC use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// `pass`.
    Pass,
    /// `fail`.
    Fail,
    /// `softfail` (SPF `~`).
    SoftFail,
    /// `neutral` (also a malformed DKIM signature here).
    Neutral,
    /// `none`: nothing to check (no record, no signature).
    None,
    /// `temperror`: a DNS failure or the check's deadline; may pass later.
    TempError,
    /// `permerror`: a broken record.
    PermError,
}

impl AuthResult {
    /// The RFC 8601 spelling, as written in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for AuthResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity SPF checked: MAIL FROM, or the HELO name when the reverse-path is null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The MAIL FROM address (`smtp.mailfrom`).
    MailFrom(String),
    /// The HELO/EHLO name (`smtp.helo`).
    Helo(String),
}

/// The SPF result (RFC 7208) for the message's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    /// The result.
    pub result: AuthResult,
    /// Which identity was checked.
    pub identity: SpfIdentity,
    /// The domain whose record was evaluated.
    pub domain: String,
    /// A short explanation (e.g. `timeout`), written as a comment in the header; `None` when
    /// there is nothing to add.
    pub reason: Option<String>,
}

/// The result of one DKIM-Signature (one per signature, in header order; malformed signatures
/// come first, as `neutral`, without domain or selector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimCheck {
    /// The signature's result.
    pub result: AuthResult,
    /// `d=`
    pub domain: Option<String>,
    /// `s=`
    pub selector: Option<String>,
    /// `i=`, when the signature has one.
    pub identity: Option<String>,
    /// The first 8 base64 characters of `b=` (RFC 6008), to tell signatures apart.
    pub b_prefix: Option<String>,
    /// A short explanation, written as a comment in the header.
    pub reason: Option<String>,
}

/// A DMARC record's policy (`p=`, RFC 7489 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `p=none`: monitor only.
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
}

impl DmarcPolicy {
    /// The record's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

/// The DMARC result (RFC 7489) for the RFC5322.From domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcCheck {
    /// `pass`, `fail`, `none` (no record, or no single RFC5322.From domain), `temperror`,
    /// `permerror`.
    pub result: AuthResult,
    /// The RFC5322.From domain, when there is one.
    pub from_domain: Option<String>,
    /// The policy to apply (after `sp`/`np`/`t=y`); `None` when no record was found, or when
    /// the record could not be fetched (then `result` is `temperror`).
    pub policy: Option<DmarcPolicy>,
    /// SPF passed for a domain aligned with the From domain.
    pub spf_aligned: bool,
    /// A DKIM signature passed for a domain aligned with the From domain.
    pub dkim_aligned: bool,
    /// A short explanation, written as a comment in the header.
    pub reason: Option<String>,
}

/// The ARC chain result (RFC 8617).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcCheck {
    /// The chain's result.
    pub result: AuthResult,
    /// A short explanation, written as a comment in the header.
    pub reason: Option<String>,
}

/// What the session should do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAction {
    /// Accept the message as it is (with the `Authentication-Results` header).
    Accept,
    /// Accept, adding `header` (a complete CRLF-terminated field, e.g.
    /// `"X-Tlsgate-Quarantine: dmarc=fail\r\n"`).
    Tag { header: String },
    /// Refuse the message: `550` with `5.7.1` (DMARC) or `5.7.23` (SPF).
    Reject {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
    /// Refuse for now: `451` with `4.7.1` (DMARC) or `4.7.24` (SPF), after a DNS failure where
    /// the policy would reject.
    TempFail {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
}

impl AuthAction {
    /// A stable one-word name for the log (`accept`, `tag`, `reject`, `tempfail`).
    pub fn label(&self) -> &'static str {
        match self {
            AuthAction::Accept => "accept",
            AuthAction::Tag { .. } => "tag",
            AuthAction::Reject { .. } => "reject",
            AuthAction::TempFail { .. } => "tempfail",
        }
    }
}

/// Everything [`Verifier::check`] found about one message, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOutcome {
    /// SPF.
    pub spf: SpfCheck,
    /// One entry per DKIM signature; empty when the message has none.
    pub dkim: Vec<DkimCheck>,
    /// DMARC.
    pub dmarc: DmarcCheck,
    /// The author domain's DMARC record when one was found: its published policy goes into
    /// DMARC aggregate reports (RFC 7489 7.2.1.1 `policy_published`).
    pub dmarc_record: Option<std::sync::Arc<mail_auth::dmarc::Dmarc>>,
    /// `None` when the message carries no ARC header fields.
    pub arc: Option<ArcCheck>,
    /// True when the deadline cut some check short (those are recorded as `temperror`).
    pub timed_out: bool,
    /// The complete `Authentication-Results: <authserv-id>; spf=...; dkim=...; dmarc=...\r\n`
    /// field, folded, CRLF-terminated.
    pub header: String,
    /// The decision ([`AuthPolicy::decide`]).
    pub action: AuthAction,
}

/// The decision on one message's results; the policy's settings are read by `config`.
impl AuthPolicy {
    /// The action for these results. Temporary errors fail temporarily (451) only where the
    /// policy would reject on a failure; otherwise the message is accepted (the header still
    /// records `temperror`). A DMARC record that could not be fetched counts as one that
    /// might say `p=reject`.
    pub fn decide(&self, spf: &SpfCheck, dmarc: &DmarcCheck) -> AuthAction {
        let from = dmarc.from_domain.as_deref().unwrap_or("");
        match dmarc.result {
            AuthResult::Pass => return AuthAction::Accept,
            AuthResult::Fail => {
                let (action, policy) = match dmarc.policy {
                    Some(DmarcPolicy::Reject) => (self.dmarc_reject, "reject"),
                    Some(DmarcPolicy::Quarantine) => (self.dmarc_quarantine, "quarantine"),
                    Some(DmarcPolicy::None) | None => return AuthAction::Accept,
                };
                return self.apply(
                    action,
                    "dmarc=fail",
                    "5.7.1",
                    format!(
                        "Message rejected: DMARC policy of {from} is {policy} and the \
                         message failed it (SPF {}{}, no aligned DKIM signature)",
                        spf.result,
                        if spf.result == AuthResult::Pass {
                            " but not aligned"
                        } else {
                            ""
                        },
                    ),
                );
            }
            AuthResult::TempError => {
                let action = match dmarc.policy {
                    Some(DmarcPolicy::Reject) | None => self.dmarc_reject,
                    Some(DmarcPolicy::Quarantine) => self.dmarc_quarantine,
                    Some(DmarcPolicy::None) => PolicyAction::Accept,
                };
                return if action == PolicyAction::Reject {
                    AuthAction::TempFail {
                        code: 451,
                        enhanced: "4.7.1",
                        text: reply_text(&format!(
                            "Temporary DNS failure evaluating DMARC for {from}, try again later"
                        )),
                    }
                } else {
                    AuthAction::Accept
                };
            }
            // No DMARC (no record, a broken record, no single From domain): SPF alone.
            _ => {}
        }
        let domain = &spf.domain;
        match spf.result {
            AuthResult::Fail => self.apply(
                self.spf_fail_without_dmarc,
                "spf=fail",
                "5.7.23",
                format!("Message rejected: SPF of {domain} does not permit this sender"),
            ),
            AuthResult::TempError if self.spf_fail_without_dmarc == PolicyAction::Reject => {
                AuthAction::TempFail {
                    code: 451,
                    enhanced: "4.7.24",
                    text: reply_text(&format!(
                        "Temporary DNS failure evaluating SPF for {domain}, try again later"
                    )),
                }
            }
            _ => AuthAction::Accept,
        }
    }

    fn apply(
        &self,
        action: PolicyAction,
        tag: &str,
        enhanced: &'static str,
        text: String,
    ) -> AuthAction {
        match action {
            PolicyAction::Accept => AuthAction::Accept,
            PolicyAction::Tag => AuthAction::Tag {
                header: format!("{}: {tag}\r\n", self.tag_header),
            },
            PolicyAction::Reject => AuthAction::Reject {
                code: 550,
                enhanced,
                text: reply_text(&text),
            },
        }
    }
}

/// What the session knows about the transaction.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The connecting client's address (SPF).
    pub client_ip: IpAddr,
    /// The EHLO/HELO argument.
    pub helo: &'a str,
    /// The reverse-path without angle brackets; `None` or `Some("")` for the null sender.
    pub mail_from: Option<&'a str>,
    /// The full message, header section included, as received.
    pub message: &'a [u8],
}

/// The resolver for [`Verifier::new`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver set-up for sender authentication: {0}")]
pub struct VerifierError(DnsError);

/// Sender authentication of inbound mail (D4): SPF, DKIM, DMARC and ARC with the `mail-auth`
/// crate, bounded by a timeout, and the policy that turns results into an action.
pub struct Verifier {
    auth: MessageAuthenticator,
    /// SPF's DNS: the authenticator's resolver, each query bounded (issue 17 item 2).
    spf_dns: spf::HickorySpfDns,
    authserv_id: String,
    timeout: Duration,
    policy: AuthPolicy,
}

impl Verifier {
    /// A verifier with a resolver of its own on `nameservers` (UDP and TCP, each on its own
    /// port; empty: the system configuration), for tools and tests; the relay shares its one
    /// resolver ([`Verifier::with_resolver`]). `timeout` bounds a whole [`Verifier::check`]; a
    /// single DNS query try gets a third of it, at most [`crate::dns::QUERY_TIMEOUT`].
    pub fn new(
        nameservers: &[SocketAddr],
        authserv_id: impl Into<String>,
        timeout: Duration,
        policy: AuthPolicy,
    ) -> Result<Verifier, VerifierError> {
        let query_timeout =
            (timeout / 3).clamp(Duration::from_millis(100), crate::dns::QUERY_TIMEOUT);
        let resolver = HickoryResolver::new(nameservers, query_timeout).map_err(VerifierError)?;
        Ok(Self::with_resolver(
            resolver.tokio_resolver(),
            authserv_id,
            timeout,
            policy,
        ))
    }

    /// A verifier on the relay's shared resolver (built once at start, its cache shared with
    /// delivery). `timeout` bounds a whole [`Verifier::check`] whatever the resolver's own
    /// per-query timeout.
    pub fn with_resolver(
        resolver: TokioResolver,
        authserv_id: impl Into<String>,
        timeout: Duration,
        policy: AuthPolicy,
    ) -> Verifier {
        Self::from_authenticator(MessageAuthenticator(resolver), authserv_id, timeout, policy)
    }

    /// A verifier on an existing `mail-auth` authenticator (the other constructors end here);
    /// SPF asks the authenticator's resolver, each query bounded by [`spf::QUERY_TIMEOUT`] or
    /// a third of `timeout`, whichever is shorter.
    pub fn from_authenticator(
        auth: MessageAuthenticator,
        authserv_id: impl Into<String>,
        timeout: Duration,
        policy: AuthPolicy,
    ) -> Verifier {
        let spf_dns = spf::HickorySpfDns::new(auth.0.clone(), spf::QUERY_TIMEOUT.min(timeout / 3));
        Verifier {
            auth,
            spf_dns,
            authserv_id: authserv_id.into(),
            timeout,
            policy,
        }
    }

    /// The authserv-id written in `Authentication-Results` (`server.hostname`).
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// What is done with failed results.
    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// The bound of one whole [`Verifier::check`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks SPF, every DKIM signature, ARC (when present) and DMARC; never takes much
    /// longer than the configured timeout.
    pub async fn check(&self, input: CheckInput<'_>) -> AuthOutcome {
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let helo = input.helo.trim();
        let sender = input.mail_from.map(str::trim).filter(|s| !s.is_empty());
        let (identity, spf_domain) = match sender {
            Some(s) => (
                SpfIdentity::MailFrom(s.to_string()),
                s.rsplit_once('@').map_or(helo, |(_, d)| d),
            ),
            None => (SpfIdentity::Helo(helo.to_string()), helo),
        };
        let parsed = AuthenticatedMessage::parse(input.message);

        // RFC 7208 4.3: a HELO that is no domain (an address literal, nothing) gets `none`
        // from check_host() without a lookup.
        let request = spf::SpfRequest {
            ip: input.client_ip,
            helo,
            sender,
            receiver: &self.authserv_id,
        };
        let spf_fut = timeout_at(deadline, spf::check_host(&self.spf_dns, request));
        let dkim_fut = async {
            match &parsed {
                Some(m) => Some(timeout_at(deadline, self.auth.verify_dkim(m)).await),
                None => None,
            }
        };
        let arc_fut = async {
            match &parsed {
                Some(m) if has_arc(m) => Some(timeout_at(deadline, self.auth.verify_arc(m)).await),
                _ => None,
            }
        };
        let (spf_out, dkim_out, arc_out) = tokio::join!(spf_fut, dkim_fut, arc_fut);

        let spf_timed_out = spf_out.is_err();
        timed_out |= spf_timed_out;
        let spf_verdict = spf_out.unwrap_or_else(|_| spf::SpfVerdict {
            result: AuthResult::TempError,
            domain: spf_domain.to_ascii_lowercase(),
            explanation: None,
            problem: Some("timeout".into()),
        });
        // DMARC (RFC 7489 4.2) takes the SPF result in mail-auth's form.
        let spf_out = SpfOutput::new(spf_verdict.domain.clone())
            .with_result(mail_auth_spf_result(spf_verdict.result));
        let dkim_out: Vec<DkimOutput<'_>> = match (dkim_out, &parsed) {
            (Some(Ok(out)), _) => out,
            (Some(Err(_)), Some(m)) => {
                timed_out = true;
                m.dkim_headers
                    .iter()
                    .map(|h| DkimOutput::temp_err(timeout_error()).with_signature(&h.header))
                    .collect()
            }
            _ => Vec::new(),
        };
        let arc = arc_out.map(|r| match r {
            Ok(out) => {
                let (result, reason) = dkim_result(out.result());
                ArcCheck { result, reason }
            }
            Err(_) => {
                timed_out = true;
                ArcCheck {
                    result: AuthResult::TempError,
                    reason: Some("timeout".into()),
                }
            }
        });

        let mut dmarc_record = None;
        let dmarc = match &parsed {
            Some(m) => {
                let params = DmarcParameters::new(m, &dkim_out, spf_domain, &spf_out);
                match timeout_at(deadline, self.auth.verify_dmarc(params)).await {
                    Ok(out) => {
                        dmarc_record = out.dmarc_record_cloned();
                        dmarc_check(&out)
                    }
                    Err(_) => {
                        timed_out = true;
                        DmarcCheck {
                            result: AuthResult::TempError,
                            from_domain: m
                                .from()
                                .rsplit_once('@')
                                .map(|(_, d)| d.to_ascii_lowercase()),
                            policy: None,
                            spf_aligned: false,
                            dkim_aligned: false,
                            reason: Some("timeout".into()),
                        }
                    }
                }
            }
            None => DmarcCheck {
                result: AuthResult::None,
                from_domain: None,
                policy: None,
                spf_aligned: false,
                dkim_aligned: false,
                reason: Some("message header not parseable".into()),
            },
        };

        let spf = SpfCheck {
            result: spf_verdict.result,
            identity,
            domain: spf_verdict.domain,
            reason: if spf_timed_out {
                Some("timeout".into())
            } else {
                spf_verdict.explanation.or(spf_verdict.problem)
            },
        };
        let dkim: Vec<DkimCheck> = dkim_out.iter().map(dkim_check).collect();
        let header = header::format(&self.authserv_id, &spf, &dkim, arc.as_ref(), &dmarc);
        let action = self.policy.decide(&spf, &dmarc);
        AuthOutcome {
            spf,
            dkim,
            dmarc,
            dmarc_record,
            arc,
            timed_out,
            header,
            action,
        }
    }

    /// The message to queue: every `Authentication-Results` claiming our authserv-id removed,
    /// then our header (and the tag header of [`AuthAction::Tag`]) prepended.
    pub fn stamp(&self, message: &[u8], outcome: &AuthOutcome) -> Vec<u8> {
        let stripped = strip_our_authentication_results(message, &self.authserv_id);
        let mut out = Vec::with_capacity(stripped.len() + outcome.header.len() + 64);
        out.extend_from_slice(outcome.header.as_bytes());
        if let AuthAction::Tag { header } = &outcome.action {
            out.extend_from_slice(header.as_bytes());
        }
        out.extend_from_slice(&stripped);
        out
    }
}

/// SMTP reply text: domains come from the message, so only printable ASCII survives (no
/// CR/LF that could split the reply), at most 400 bytes.
fn reply_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(400)
        .collect()
}

fn has_arc(m: &AuthenticatedMessage<'_>) -> bool {
    !m.as_headers.is_empty()
        || !m.ams_headers.is_empty()
        || !m.aar_headers.is_empty()
        || m.has_arc_errors
}

fn timeout_error() -> mail_auth::Error {
    mail_auth::Error::Dns(mail_auth::DnsError::Resolver("timeout".into()))
}

/// Our SPF result in mail-auth's type, for its DMARC evaluation.
fn mail_auth_spf_result(r: AuthResult) -> SpfResult {
    match r {
        AuthResult::Pass => SpfResult::Pass,
        AuthResult::Fail => SpfResult::Fail,
        AuthResult::SoftFail => SpfResult::SoftFail,
        AuthResult::Neutral => SpfResult::Neutral,
        AuthResult::TempError => SpfResult::TempError,
        AuthResult::PermError => SpfResult::PermError,
        AuthResult::None => SpfResult::None,
    }
}

fn dkim_result(r: &DkimResult) -> (AuthResult, Option<String>) {
    match r {
        DkimResult::Pass => (AuthResult::Pass, None),
        // mail-auth reports a body hash mismatch as neutral; RFC 6376 §6.1.3 makes it a
        // PERMFAIL, i.e. `fail` in RFC 8601 terms: the signature did not verify.
        DkimResult::Neutral(
            e @ (mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)
            | mail_auth::Error::Arc(mail_auth::arc::ArcError::FailedBodyHashMatch)),
        ) => (AuthResult::Fail, Some(error_text(e))),
        DkimResult::Neutral(e) => (AuthResult::Neutral, Some(error_text(e))),
        DkimResult::Fail(e) => (AuthResult::Fail, Some(error_text(e))),
        DkimResult::PermError(e) => (AuthResult::PermError, Some(error_text(e))),
        DkimResult::TempError(e) => (AuthResult::TempError, Some(error_text(e))),
        DkimResult::None => (AuthResult::None, None),
    }
}

fn error_text(e: &mail_auth::Error) -> String {
    match e {
        mail_auth::Error::Dns(mail_auth::DnsError::Resolver(r)) if r == "timeout" => {
            "timeout".into()
        }
        e => e.to_string(),
    }
}

fn dkim_check(out: &DkimOutput<'_>) -> DkimCheck {
    let (result, reason) = dkim_result(out.result());
    let sig: Option<&Signature> = out.signature();
    DkimCheck {
        result,
        domain: sig.map(|s| s.d.to_ascii_lowercase()),
        selector: sig.map(|s| s.s.clone()),
        identity: sig.map(|s| s.i.clone()).filter(|i| !i.is_empty()),
        b_prefix: sig.and_then(|s| s.b.get(..6)).map(header::base64),
        reason,
    }
}

fn dmarc_check(out: &DmarcOutput) -> DmarcCheck {
    let (result, reason) = match out.result() {
        DmarcResult::Pass => (AuthResult::Pass, None),
        DmarcResult::Fail(e) => (AuthResult::Fail, Some(error_text(&e))),
        DmarcResult::TempError(e) => (AuthResult::TempError, Some(error_text(&e))),
        DmarcResult::PermError(e) => (AuthResult::PermError, Some(error_text(&e))),
        DmarcResult::None => (AuthResult::None, None),
    };
    let policy = out.dmarc_record().map(|_| match out.policy() {
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::None | Policy::Unspecified => DmarcPolicy::None,
    });
    DmarcCheck {
        result,
        from_domain: Some(out.domain().to_ascii_lowercase()).filter(|d| !d.is_empty()),
        policy,
        spf_aligned: matches!(out.spf_result(), DmarcResult::Pass),
        dkim_aligned: matches!(out.dkim_result(), DmarcResult::Pass),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spf(result: AuthResult) -> SpfCheck {
        SpfCheck {
            result,
            identity: SpfIdentity::MailFrom("a@example.org".into()),
            domain: "example.org".into(),
            reason: None,
        }
    }

    fn dmarc(result: AuthResult, policy: Option<DmarcPolicy>) -> DmarcCheck {
        DmarcCheck {
            result,
            from_domain: Some("example.org".into()),
            policy,
            spf_aligned: false,
            dkim_aligned: false,
            reason: None,
        }
    }

    #[test]
    fn defaults() {
        let p = AuthPolicy::default();
        let fail = spf(AuthResult::Fail);
        assert_eq!(
            p.decide(&fail, &dmarc(AuthResult::Pass, Some(DmarcPolicy::Reject))),
            AuthAction::Accept
        );
        assert!(matches!(
            p.decide(&fail, &dmarc(AuthResult::Fail, Some(DmarcPolicy::Reject))),
            AuthAction::Reject {
                code: 550,
                enhanced: "5.7.1",
                ..
            }
        ));
        assert_eq!(
            p.decide(
                &fail,
                &dmarc(AuthResult::Fail, Some(DmarcPolicy::Quarantine))
            ),
            AuthAction::Tag {
                header: "X-Tlsgate-Quarantine: dmarc=fail\r\n".into()
            }
        );
        assert_eq!(
            p.decide(&fail, &dmarc(AuthResult::Fail, Some(DmarcPolicy::None))),
            AuthAction::Accept
        );
        // No DMARC, or a broken record: SPF alone decides.
        for none in [AuthResult::None, AuthResult::PermError] {
            assert_eq!(
                p.decide(&fail, &dmarc(none, None)),
                AuthAction::Tag {
                    header: "X-Tlsgate-Quarantine: spf=fail\r\n".into()
                }
            );
            for r in [
                AuthResult::SoftFail,
                AuthResult::TempError,
                AuthResult::None,
            ] {
                assert_eq!(p.decide(&spf(r), &dmarc(none, None)), AuthAction::Accept);
            }
        }
    }

    #[test]
    fn temperror_tempfails_only_where_a_failure_would_reject() {
        let p = AuthPolicy::default();
        let s = spf(AuthResult::TempError);
        let temp = |policy| p.decide(&s, &dmarc(AuthResult::TempError, policy));
        assert!(matches!(
            temp(Some(DmarcPolicy::Reject)),
            AuthAction::TempFail { code: 451, .. }
        ));
        // Unknown policy (record lookup failed): it might be reject.
        assert!(matches!(temp(None), AuthAction::TempFail { code: 451, .. }));
        assert_eq!(temp(Some(DmarcPolicy::Quarantine)), AuthAction::Accept);
        assert_eq!(temp(Some(DmarcPolicy::None)), AuthAction::Accept);

        let strict = AuthPolicy {
            dmarc_quarantine: PolicyAction::Reject,
            ..AuthPolicy::default()
        };
        assert!(matches!(
            strict.decide(
                &s,
                &dmarc(AuthResult::TempError, Some(DmarcPolicy::Quarantine))
            ),
            AuthAction::TempFail { .. }
        ));
        let lax = AuthPolicy {
            dmarc_reject: PolicyAction::Tag,
            ..AuthPolicy::default()
        };
        assert_eq!(
            lax.decide(&s, &dmarc(AuthResult::TempError, None)),
            AuthAction::Accept
        );
    }

    #[test]
    fn reply_text_cannot_split_the_reply() {
        let p = AuthPolicy::default();
        let mut d = dmarc(AuthResult::Fail, Some(DmarcPolicy::Reject));
        d.from_domain = Some("evil.example\r\n250 ok".into());
        match p.decide(&spf(AuthResult::Fail), &d) {
            AuthAction::Reject { text, .. } => {
                assert!(!text.contains('\r') && !text.contains('\n'), "{text:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
