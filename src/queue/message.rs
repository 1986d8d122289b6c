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
    /// A new id from the current time in microseconds, at least one above every id generated or
    /// [observed](QueueId::observe) before in this process.
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

    /// The 14 hex digits.
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
    /// `NOTIFY=NEVER`: no DSN at all; the other flags are then false.
    pub never: bool,
    /// `SUCCESS`: a DSN on delivery (T12).
    pub success: bool,
    /// `FAILURE`: a DSN when delivery fails.
    pub failure: bool,
    /// `DELAY`: a DSN when delivery is delayed.
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

/// One envelope recipient (`RCPT TO`) with its RFC 3461 DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// `local@domain`, domain normalised to A-label.
    pub address: String,
    /// NOTIFY, or its default (failure and delay) when absent.
    pub notify: DsnNotify,
    /// RFC 3461 ORCPT: (address type, original address).
    pub orcpt: Option<(String, String)>,
}

/// How and from whom the message was received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reception {
    /// The connecting client's address.
    pub client_ip: IpAddr,
    /// The HELO/EHLO argument as the client sent it.
    pub helo: String,
    /// The role of the listener that accepted it.
    pub role: Role,
    /// `None` when the session was plaintext.
    pub tls: Option<TlsInfo>,
    /// Seconds since the Unix epoch when it was accepted; expiry and delay DSNs count from here.
    pub received_at: u64,
}

/// The envelope and metadata of one queued message (persisted; see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Queue id, also the store key.
    pub id: QueueId,
    /// `None` for the null reverse-path `<>` (bounces: never a DSN about them).
    pub sender: Option<String>,
    /// In `RCPT TO` order; [`RecipientState`]s pair with them by position.
    pub recipients: Vec<Recipient>,
    /// RFC 3461 RET (full message or headers in a DSN); `None` when not given.
    pub ret: Option<DsnRet>,
    /// RFC 3461 ENVID, as given (xtext-decoded); `None` when not given.
    pub envid: Option<String>,
    /// RFC 6152 / 3030 BODY parameter (7BIT default).
    pub body_type: BodyType,
    /// RFC 6531 SMTPUTF8 was given with MAIL FROM.
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS was requested with MAIL FROM.
    pub requiretls: bool,
    /// How and from whom it was received.
    pub reception: Reception,
    /// The `Received:` header field tlsgate added (with CRLF), prepended at delivery.
    pub received_header: String,
    /// Body size in octets (without the `Received:` header).
    pub size: u64,
}

impl MessageMeta {
    /// Reads a stored record (postcard). The layout has grown once: issue 14 item 7 appended
    /// `client_certificate` to the received [`TlsInfo`]; records queued before that are read
    /// through [`legacy::MessageMetaV1`], so an acknowledged message survives the upgrade (S5).
    ///
    /// Unambiguous: an old record with TLS cannot read in the current layout, because the byte
    /// where the new `Option` tag would be is the first of `received_at`, a varint of a Unix
    /// time (at least 128, so its first byte has the continuation bit set), never 0 or 1.
    /// Records without TLS are the same in both layouts.
    pub fn decode(bytes: &[u8]) -> Result<MessageMeta, postcard::Error> {
        let current = postcard::take_from_bytes::<MessageMeta>(bytes);
        if let Ok((meta, rest)) = &current {
            if rest.is_empty() {
                return Ok(meta.clone());
            }
        }
        if let Ok((old, [])) = postcard::take_from_bytes::<legacy::MessageMetaV1>(bytes) {
            return Ok(old.into());
        }
        // As before the fallback existed: the current layout, trailing bytes ignored.
        current.map(|(meta, _)| meta)
    }
}

/// Stored layouts older than the current one, read by [`MessageMeta::decode`] only.
pub mod legacy {
    use super::*;

    /// [`TlsInfo`] before `client_certificate` (until issue 14 item 7).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TlsInfoV1 {
        /// "TLSv1.2" or "TLSv1.3".
        pub version: String,
        /// The suite name.
        pub cipher: String,
    }

    /// [`Reception`] with a [`TlsInfoV1`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ReceptionV1 {
        /// The connecting client's address.
        pub client_ip: IpAddr,
        /// The HELO/EHLO argument.
        pub helo: String,
        /// The listener's role.
        pub role: Role,
        /// `None` for plaintext.
        pub tls: Option<TlsInfoV1>,
        /// Unix seconds of acceptance.
        pub received_at: u64,
    }

    /// [`MessageMeta`] with a [`ReceptionV1`]; every other field as today.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MessageMetaV1 {
        /// As [`MessageMeta`]'s `id`.
        pub id: QueueId,
        /// As [`MessageMeta`]'s `sender`.
        pub sender: Option<String>,
        /// As [`MessageMeta`]'s `recipients`.
        pub recipients: Vec<Recipient>,
        /// As [`MessageMeta`]'s `ret`.
        pub ret: Option<DsnRet>,
        /// As [`MessageMeta`]'s `envid`.
        pub envid: Option<String>,
        /// As [`MessageMeta`]'s `body_type`.
        pub body_type: BodyType,
        /// As [`MessageMeta`]'s `smtputf8`.
        pub smtputf8: bool,
        /// As [`MessageMeta`]'s `requiretls`.
        pub requiretls: bool,
        /// The reception in the old layout.
        pub reception: ReceptionV1,
        /// As [`MessageMeta`]'s `received_header`.
        pub received_header: String,
        /// As [`MessageMeta`]'s `size`.
        pub size: u64,
    }

    impl From<MessageMetaV1> for MessageMeta {
        fn from(old: MessageMetaV1) -> MessageMeta {
            let r = old.reception;
            MessageMeta {
                id: old.id,
                sender: old.sender,
                recipients: old.recipients,
                ret: old.ret,
                envid: old.envid,
                body_type: old.body_type,
                smtputf8: old.smtputf8,
                requiretls: old.requiretls,
                reception: Reception {
                    client_ip: r.client_ip,
                    helo: r.helo,
                    role: r.role,
                    tls: r.tls.map(|t| TlsInfo {
                        version: t.version,
                        cipher: t.cipher,
                        client_certificate: None,
                    }),
                    received_at: r.received_at,
                },
                received_header: old.received_header,
                size: old.size,
            }
        }
    }
}

/// Where one recipient is in delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not tried yet.
    Pending,
    /// Tried and failed temporarily; tried again at `next_attempt`.
    Deferred,
    /// Accepted by the next hop (final).
    Delivered,
    /// Failed permanently or expired (final); the sender gets a failure DSN unless NOTIFY
    /// says otherwise.
    Failed,
    /// Put on hold by the administrator (`tlsgate queue hold`, Postfix's `postsuper -h`): not
    /// delivered, nor expired, until released; then pending again (deferred when it had been
    /// tried). Added last, so that the stored encoding of the others (the variant index) is
    /// unchanged and queues written by older versions read back as they were.
    Held,
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
            RecipientStatus::Held => "held",
        })
    }
}

/// Delivery state of one recipient, updated by the delivery engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// Where the recipient is in delivery.
    pub status: RecipientStatus,
    /// Delivery attempts made so far.
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
    /// A recipient not tried yet, due at `now` (seconds since the Unix epoch).
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
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The envelope; its `size` is `body.len()`.
    pub meta: MessageMeta,
    /// The message data to deliver (header and body), without the `Received:` header that
    /// `meta.received_header` holds.
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

    /// The recipient states keep their stored encoding; `Held` (issue 14) came last.
    #[test]
    fn recipient_status_keeps_its_stored_encoding() {
        let encoded = |s: RecipientStatus| postcard::to_allocvec(&s).expect("encodes");
        assert_eq!(encoded(RecipientStatus::Pending), [0]);
        assert_eq!(encoded(RecipientStatus::Deferred), [1]);
        assert_eq!(encoded(RecipientStatus::Delivered), [2]);
        assert_eq!(encoded(RecipientStatus::Failed), [3]);
        assert_eq!(encoded(RecipientStatus::Held), [4]);
    }

    fn meta_with_tls(tls: Option<TlsInfo>) -> MessageMeta {
        MessageMeta {
            id: QueueId::parse("0123456789ABCD").expect("id"),
            sender: Some("a@example.no".into()),
            recipients: vec![Recipient {
                address: "b@example.org".into(),
                notify: DsnNotify::default(),
                orcpt: None,
            }],
            ret: None,
            envid: Some("env".into()),
            body_type: BodyType::EightBitMime,
            smtputf8: false,
            requiretls: true,
            reception: Reception {
                client_ip: "192.0.2.7".parse().expect("ip"),
                helo: "exchange.example.no".into(),
                role: Role::Outbound,
                tls,
                received_at: 1_700_000_000,
            },
            received_header: "Received: x\r\n".into(),
            size: 42,
        }
    }

    /// S5 across the upgrade of issue 14 item 7: a record written in the layout before
    /// `TlsInfo::client_certificate` (with and without TLS) still reads, with no certificate.
    #[test]
    fn records_from_before_client_certificates_still_decode() {
        for tls in [
            Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                client_certificate: None,
            }),
            None,
        ] {
            let expected = meta_with_tls(tls.clone());
            let old = legacy::MessageMetaV1 {
                id: expected.id.clone(),
                sender: expected.sender.clone(),
                recipients: expected.recipients.clone(),
                ret: expected.ret,
                envid: expected.envid.clone(),
                body_type: expected.body_type,
                smtputf8: expected.smtputf8,
                requiretls: expected.requiretls,
                reception: legacy::ReceptionV1 {
                    client_ip: expected.reception.client_ip,
                    helo: expected.reception.helo.clone(),
                    role: expected.reception.role,
                    tls: tls.map(|t| legacy::TlsInfoV1 {
                        version: t.version,
                        cipher: t.cipher,
                    }),
                    received_at: expected.reception.received_at,
                },
                received_header: expected.received_header.clone(),
                size: expected.size,
            };
            let bytes = postcard::to_allocvec(&old).expect("encodes");
            assert_eq!(MessageMeta::decode(&bytes).expect("decodes"), expected);
        }
    }

    /// The current layout round-trips, the client certificate included.
    #[test]
    fn records_with_a_client_certificate_round_trip() {
        let meta = meta_with_tls(Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_certificate: Some(crate::tls::ClientCertificate {
                subject: "CN=exchange.example.no".into(),
                issuer: "CN=Bank internal CA".into(),
                serial: "01:02".into(),
            }),
        }));
        let bytes = postcard::to_allocvec(&meta).expect("encodes");
        assert_eq!(MessageMeta::decode(&bytes).expect("decodes"), meta);
        assert!(MessageMeta::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
