//! SMTP command parsing (RFC 5321 4.1), with the ESMTP parameters tlsgate supports:
//! SIZE (RFC 1870), BODY (RFC 6152, 3030), SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT
//! (RFC 3461) and REQUIRETLS (RFC 8689).
//!
//! Strict by design: every parameter is known, appears once, and has a bounded, valid value;
//! anything else is refused with a reply that says what was wrong (never echoing more than a
//! few dozen bytes of client input).

use super::address::{self, Address, AddressError, ForwardPath, ReversePath};
use super::reply::Reply;
use serde::{Deserialize, Serialize};

/// RFC 5321 / 6152 / 3030 BODY parameter. Stored with every queued message: the variants'
/// order is part of the queue's on-disk format (postcard writes the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyType {
    /// `7BIT` (also the default when BODY is absent).
    SevenBit,
    /// `8BITMIME` (RFC 6152).
    EightBitMime,
    /// `BINARYMIME` (RFC 3030; needs BDAT).
    BinaryMime,
}

/// RFC 3461 RET: how much of the message a failure DSN returns. Stored with every queued
/// message: the variants' order is part of the queue's on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnRet {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header only.
    Headers,
}

/// RET by its short name in this module's parser.
pub use DsnRet as Ret;

const MAX_PARAMS: usize = 16;
const MAX_ENVID: usize = 100;
const MAX_ORCPT: usize = 500;

/// One parsed SMTP command (RFC 5321 4.1.1), as [`parse_command`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO name`; the argument as sent (printable ASCII, at most 255 octets).
    Helo(String),
    /// `EHLO name`; same rules as HELO.
    Ehlo(String),
    /// `MAIL FROM:<path> params`.
    Mail(MailFrom),
    /// `RCPT TO:<path> params`.
    Rcpt(RcptTo),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030): `size` octets of message data follow the command; `last`
    /// ends the message.
    Bdat { size: u64, last: bool },
    /// `RSET`.
    Rset,
    /// `NOOP` (any argument ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `VRFY arg` (argument required).
    Vrfy(String),
    /// `EXPN arg` (argument required).
    Expn(String),
    /// `HELP [topic]`.
    Help(Option<String>),
}

/// `MAIL FROM` with its ESMTP parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse-path.
    pub sender: ReversePath,
    /// RFC 1870 SIZE: the client's estimate in octets; `None` when not given.
    pub size: Option<u64>,
    /// BODY; `None` when not given (7BIT).
    pub body: Option<BodyType>,
    /// RFC 6531 SMTPUTF8: UTF-8 in addresses and header allowed.
    pub smtputf8: bool,
    /// RFC 3461 RET; `None` when not given.
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID, xtext-decoded; `None` when not given.
    pub envid: Option<String>,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
}

/// `RCPT TO` with its ESMTP parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    /// The forward-path.
    pub recipient: ForwardPath,
    /// RFC 3461 NOTIFY.
    pub notify: Notify,
    /// RFC 3461 ORCPT; `None` when not given.
    pub orcpt: Option<OriginalRecipient>,
}

/// RFC 3461 NOTIFY. `explicit` is false when the parameter was absent (the default then is
/// failure and delay).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    /// `NEVER` (alone).
    pub never: bool,
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
    /// The parameter was given.
    pub explicit: bool,
}

/// RFC 3461 ORCPT: address type (e.g. `rfc822`) and the xtext-decoded original address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822`.
    pub addr_type: String,
    /// The original recipient, xtext-decoded.
    pub address: String,
}

/// Why a command line was refused; [`CommandError::reply`] gives the SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// An unknown verb (`500 5.5.2`).
    #[error("command not recognized")]
    UnknownCommand,
    /// The line is not UTF-8 (`500 5.5.2`).
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// Wrong arguments for a known command (`501 5.5.4`).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The MAIL FROM path does not parse (`553 5.1.7`).
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The RCPT TO path does not parse (`553 5.1.3`).
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// An ESMTP parameter tlsgate does not support (`555 5.5.4`); carries its name.
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A supported parameter with a bad or repeated value.
    #[error("bad parameter {name}: {reason}")]
    BadParameter { name: String, reason: &'static str },
    /// More parameters than the parser accepts on one command.
    #[error("too many parameters")]
    TooManyParameters,
    /// A non-ASCII address without the SMTPUTF8 parameter (RFC 6531 3.4).
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtputf8,
}

impl CommandError {
    /// The SMTP reply for this error: `500`/`501`/`553`/`555` with the matching RFC 3463 code;
    /// client input in it is bounded (see the module doc).
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::UnknownCommand => Reply::new(500, "5.5.2", "Command not recognized"),
            CommandError::InvalidUtf8 => {
                Reply::new(500, "5.5.2", "Command line is not valid UTF-8")
            }
            CommandError::Syntax(reason) => {
                Reply::new(501, "5.5.4", format!("Syntax error: {reason}"))
            }
            CommandError::BadSender(e) => {
                Reply::new(553, "5.1.7", format!("Bad sender address syntax: {e}"))
            }
            CommandError::BadRecipient(e) => {
                Reply::new(553, "5.1.3", format!("Bad recipient address syntax: {e}"))
            }
            CommandError::UnknownParameter(name) => {
                Reply::new(555, "5.5.4", format!("Unsupported parameter {name}"))
            }
            CommandError::BadParameter { name, reason } => {
                Reply::new(555, "5.5.4", format!("Bad parameter {name}: {reason}"))
            }
            CommandError::TooManyParameters => Reply::new(555, "5.5.4", "Too many parameters"),
            // RFC 6531 3.7.4.1
            CommandError::NeedsSmtputf8 => Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address needs the SMTPUTF8 parameter",
            ),
        }
    }
}

/// Client input shown in replies is cut and cleaned.
fn shown(s: &str) -> String {
    s.chars()
        .take(32)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Parses one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::Syntax("this command takes no arguments"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => Ok(Command::Ehlo(client_name(rest)?)),
        "HELO" => Ok(Command::Helo(client_name(rest)?)),
        "MAIL" => parse_mail(rest).map(Command::Mail),
        "RCPT" => parse_rcpt(rest).map(Command::Rcpt),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy(required(rest)?)),
        "EXPN" => Ok(Command::Expn(required(rest)?)),
        "HELP" => Ok(Command::Help(
            (!rest.trim().is_empty()).then(|| rest.trim().to_string()),
        )),
        "BDAT" => parse_bdat(rest),
        "" => Err(CommandError::Syntax("empty command")),
        _ => Err(CommandError::UnknownCommand),
    }
}

fn required(rest: &str) -> Result<String, CommandError> {
    let arg = rest.trim();
    if arg.is_empty() {
        return Err(CommandError::Syntax("argument required"));
    }
    Ok(arg.to_string())
}

/// The EHLO/HELO argument: a domain or address literal, kept as text for the Received header.
fn client_name(rest: &str) -> Result<String, CommandError> {
    let name = rest.trim();
    if name.is_empty() {
        return Err(CommandError::Syntax("EHLO/HELO needs your host name"));
    }
    if name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::Syntax("invalid host name"));
    }
    Ok(name.to_string())
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

/// Strips `FROM:` / `TO:` (case-insensitive) and at most a little whitespace before the path:
/// RFC 5321 allows none, but common clients send one space.
fn after_keyword<'a>(rest: &'a str, keyword: &str) -> Result<&'a str, CommandError> {
    let head = rest
        .get(..keyword.len())
        .filter(|h| h.eq_ignore_ascii_case(keyword))
        .ok_or(CommandError::Syntax(
            "expected FROM:<address> or TO:<address>",
        ))?;
    Ok(rest[head.len()..].trim_start_matches(' '))
}

/// Splits ESMTP parameters `KEY[=VALUE]` (RFC 5321 4.1.2 esmtp-param).
fn parameters(text: &str) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(CommandError::Syntax("expected a space after the address"));
    }
    let mut params = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if params.len() == MAX_PARAMS {
            return Err(CommandError::TooManyParameters);
        }
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key.len() <= 20
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::UnknownParameter(shown(key)));
        }
        let key = key.to_ascii_uppercase();
        if let Some(v) = value {
            // esmtp-value: printable except '=' and space (UTF-8 allowed by RFC 6531).
            if v.is_empty()
                || v.chars()
                    .any(|c| c == '=' || (c.is_ascii() && !c.is_ascii_graphic()))
            {
                return Err(CommandError::BadParameter {
                    name: key,
                    reason: "invalid value",
                });
            }
        }
        if params.iter().any(|(k, _): &(String, _)| *k == key) {
            return Err(CommandError::BadParameter {
                name: key,
                reason: "given twice",
            });
        }
        params.push((key, value));
    }
    Ok(params)
}

fn bad(name: &str, reason: &'static str) -> CommandError {
    CommandError::BadParameter {
        name: name.to_string(),
        reason,
    }
}

fn value<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, CommandError> {
    value.ok_or_else(|| bad(name, "needs a value"))
}

fn no_value(name: &str, value: Option<&str>) -> Result<(), CommandError> {
    match value {
        None => Ok(()),
        Some(_) => Err(bad(name, "takes no value")),
    }
}

/// RFC 3461 4: xtext, `+XX` escapes (upper-case hex) for octets outside 33–126, '+' and '='.
pub fn decode_xtext(text: &str, max: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                {
                    return None;
                }
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
        if out.len() > max {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_mail(rest: &str) -> Result<MailFrom, CommandError> {
    let path = after_keyword(rest, "FROM:")?;
    let (inside, tail) = address::split_path(path).map_err(CommandError::BadSender)?;
    let sender = address::parse_reverse_path(inside).map_err(CommandError::BadSender)?;
    let mut mail = MailFrom {
        sender,
        size: None,
        body: None,
        smtputf8: false,
        ret: None,
        envid: None,
        requiretls: false,
    };
    for (key, val) in parameters(tail)? {
        match key.as_str() {
            "SIZE" => {
                let v = value(&key, val)?;
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(&key, "not a number"));
                }
                mail.size = Some(v.parse().map_err(|_| bad(&key, "too large"))?);
            }
            "BODY" => {
                mail.body = Some(match value(&key, val)?.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return Err(bad(&key, "use 7BIT or 8BITMIME")),
                })
            }
            "SMTPUTF8" => {
                no_value(&key, val)?;
                mail.smtputf8 = true;
            }
            "REQUIRETLS" => {
                no_value(&key, val)?;
                mail.requiretls = true;
            }
            "RET" => {
                mail.ret = Some(match value(&key, val)?.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Headers,
                    _ => return Err(bad(&key, "use FULL or HDRS")),
                })
            }
            "ENVID" => {
                let v = value(&key, val)?;
                mail.envid = Some(
                    decode_xtext(v, MAX_ENVID).ok_or_else(|| bad(&key, "invalid or too long"))?,
                );
            }
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    if !inside.is_ascii() && !mail.smtputf8 {
        return Err(CommandError::NeedsSmtputf8);
    }
    Ok(mail)
}

fn parse_rcpt(rest: &str) -> Result<RcptTo, CommandError> {
    let path = after_keyword(rest, "TO:")?;
    let (inside, tail) = address::split_path(path).map_err(CommandError::BadRecipient)?;
    let recipient = address::parse_forward_path(inside).map_err(CommandError::BadRecipient)?;
    let mut rcpt = RcptTo {
        recipient,
        notify: Notify::default(),
        orcpt: None,
    };
    for (key, val) in parameters(tail)? {
        match key.as_str() {
            "NOTIFY" => {
                let mut notify = Notify {
                    explicit: true,
                    ..Notify::default()
                };
                for item in value(&key, val)?.split(',') {
                    let flag = match item.to_ascii_uppercase().as_str() {
                        "NEVER" => &mut notify.never,
                        "SUCCESS" => &mut notify.success,
                        "FAILURE" => &mut notify.failure,
                        "DELAY" => &mut notify.delay,
                        _ => return Err(bad(&key, "use NEVER or SUCCESS,FAILURE,DELAY")),
                    };
                    if *flag {
                        return Err(bad(&key, "repeated keyword"));
                    }
                    *flag = true;
                }
                // RFC 3461 4.1: NEVER excludes the others.
                if notify.never && (notify.success || notify.failure || notify.delay) {
                    return Err(bad(&key, "NEVER cannot be combined"));
                }
                rcpt.notify = notify;
            }
            "ORCPT" => {
                let v = value(&key, val)?;
                let (addr_type, encoded) = v
                    .split_once(';')
                    .ok_or_else(|| bad(&key, "expected type;address"))?;
                let type_ok = !addr_type.is_empty()
                    && addr_type.len() <= 20
                    && addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !type_ok {
                    return Err(bad(&key, "bad address type"));
                }
                let address = decode_xtext(encoded, MAX_ORCPT)
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad(&key, "invalid or too long"))?;
                rcpt.orcpt = Some(OriginalRecipient {
                    addr_type: addr_type.to_ascii_lowercase(),
                    address,
                });
            }
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    Ok(rcpt)
}

/// The address a recipient names, for relay checks and the queue; `Postmaster` resolves to
/// `postmaster@<default_domain>`.
pub fn recipient_address(path: &ForwardPath, default_domain: &crate::domain::Domain) -> Address {
    match path {
        ForwardPath::Address(a) => a.clone(),
        ForwardPath::Postmaster => Address::postmaster(default_domain.clone()),
    }
}

#[cfg(test)]
mod tests;
