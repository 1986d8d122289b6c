//! What the queue stores: one [`MessageMeta`] per message (envelope, DSN parameters, how it was
//! received), its body, and one [`RecipientState`] per recipient for the delivery engine.
//!
//! These types are persisted (postcard): changing them changes the on-disk format. The
//! protocol's own vocabulary that a message keeps, BODY and RET, is defined once in
//! [`crate::smtp::command`] and stored as it is; a test below pins its encoding.

use crate::config::Role;
pub use crate::smtp::command::{BodyType, DsnRet};
use crate::tls::TlsInfo;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A queue id: 14 upper-case hex digits of a strictly increasing microsecond timestamp, so ids
/// sort by arrival and never repeat within a process (nor across restarts, unless the clock
/// goes back by more than the time between them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(String);

static LAST_ID_MICROS: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    pub fn generate() -> QueueId {
        let now = now_micros();
        let mut last = LAST_ID_MICROS.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match LAST_ID_MICROS.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId(format!("{next:014X}")),
                Err(actual) => last = actual,
            }
        }
    }

    /// Makes every later [`QueueId::generate`] larger than `existing` (called at start with
    /// the newest id in the queue, so that a clock that went back cannot reuse an id).
    pub fn observe(existing: &QueueId) {
        if let Some(micros) = existing.arrival_micros() {
            LAST_ID_MICROS.fetch_max(micros, Ordering::Relaxed);
        }
    }

    /// Accepts only what [`QueueId::generate`] produces (ids come from the CLI and API too).
    pub fn parse(s: &str) -> Option<QueueId> {
        let valid = s.len() == 14
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        valid.then(|| QueueId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The arrival time the id encodes (microseconds since the epoch).
    pub fn arrival_micros(&self) -> Option<u64> {
        u64::from_str_radix(&self.0, 16).ok()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    now_micros() / 1_000_000
}

/// RFC 3461 NOTIFY for one recipient. Without an explicit NOTIFY the default is failure and
/// delay (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnNotify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Default for DsnNotify {
    fn default() -> Self {
        DsnNotify {
            never: false,
            success: false,
            failure: true,
            delay: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// `local@domain`, domain normalised to A-label.
    pub address: String,
    pub notify: DsnNotify,
    /// RFC 3461 ORCPT: (address type, original address).
    pub orcpt: Option<(String, String)>,
}

/// How and from whom the message was received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reception {
    pub client_ip: IpAddr,
    pub helo: String,
    pub role: Role,
    /// `None` when the session was plaintext.
    pub tls: Option<TlsInfo>,
    pub received_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: QueueId,
    /// `None` for the null reverse-path `<>` (bounces: never a DSN about them).
    pub sender: Option<String>,
    pub recipients: Vec<Recipient>,
    pub ret: Option<DsnRet>,
    pub envid: Option<String>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS was requested with MAIL FROM.
    pub requiretls: bool,
    pub reception: Reception,
    /// The `Received:` header field tlsgate added (with CRLF), prepended at delivery.
    pub received_header: String,
    /// Body size in octets (without the `Received:` header).
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not tried yet.
    Pending,
    Deferred,
    Delivered,
    Failed,
}

impl RecipientStatus {
    /// Delivered or failed: nothing more will be tried.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Failed)
    }
}

impl fmt::Display for RecipientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecipientStatus::Pending => "pending",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Failed => "failed",
        })
    }
}

/// Delivery state of one recipient, updated by the delivery engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub status: RecipientStatus,
    pub attempts: u32,
    /// Unix seconds of the next attempt (pending / deferred).
    pub next_attempt: u64,
    /// The last reply or local reason, e.g. "450 4.2.0 mailbox busy".
    pub last_reply: Option<String>,
    /// RFC 3463 status of the last result ("4.4.1"), for the DSN `Status:` field.
    pub last_status: Option<String>,
    /// The host that gave the last reply, for the DSN `Remote-MTA:` field.
    pub remote_mta: Option<String>,
    /// Unix seconds of the last attempt (0: none yet).
    pub last_attempt: u64,
    /// A delay DSN went out for this recipient (at most one is sent).
    pub delay_notified: bool,
    /// The last deferral was because the TLS policy could not be met.
    pub tls_deferral: bool,
}

impl RecipientState {
    pub fn new_pending(now: u64) -> RecipientState {
        RecipientState {
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt: now,
            last_reply: None,
            last_status: None,
            remote_mta: None,
            last_attempt: 0,
            delay_notified: false,
            tls_deferral: false,
        }
    }
}

/// A message ready to be committed to the queue.
#[derive(Debug)]
pub struct NewMessage {
    pub meta: MessageMeta,
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_parse_back() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert!(b > a);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(QueueId::parse("../../etc"), None);
        assert_eq!(QueueId::parse("0123456789abcd"), None);
    }

    #[test]
    fn ids_stay_above_an_observed_newer_id() {
        // An id one minute ahead of the clock, as after the clock went back.
        let ahead = now_micros() + 60_000_000;
        let existing = QueueId::parse(&format!("{ahead:014X}")).unwrap();
        QueueId::observe(&existing);
        assert!(QueueId::generate() > existing);
    }

    /// BODY and RET live in `smtp` and are stored as they are: their postcard encoding (the
    /// variant index) must never change, or queued messages would read back wrong after an
    /// upgrade (S5: an acknowledged message survives).
    #[test]
    fn protocol_vocabulary_keeps_its_stored_encoding() {
        fn encoded(value: &impl Serialize) -> Vec<u8> {
            postcard::to_allocvec(value).expect("encodes")
        }
        assert_eq!(encoded(&BodyType::SevenBit), [0]);
        assert_eq!(encoded(&BodyType::EightBitMime), [1]);
        assert_eq!(encoded(&BodyType::BinaryMime), [2]);
        assert_eq!(encoded(&DsnRet::Full), [0]);
        assert_eq!(encoded(&DsnRet::Headers), [1]);
    }
}
