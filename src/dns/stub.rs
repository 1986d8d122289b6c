//! A minimal stub resolver for `dns.dnssec = "resolver"` (D5): one question to a validating
//! resolver on loopback, with the AD and DO bits set, and the whole reply back, header
//! included, so that its AD bit (RFC 4035 section 3.2.3, RFC 6840 section 5.7) and its
//! extended DNS errors (RFC 8914) can be read. hickory's resolver hides both: it answers with
//! records, and turns SERVFAIL into an error without the reply.
//!
//! UDP first, TCP when the reply is truncated (RFC 7766 section 5); each server in order, each
//! wait bounded by the query timeout. No cache: the validating resolver behind it has one.

use hickory_resolver::proto::op::{Edns, Message, Query};
use hickory_resolver::proto::rr::rdata::opt::EdnsOption;
use hickory_resolver::proto::rr::{Name, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// EDNS option code of an extended DNS error (RFC 8914 section 2).
const EDE_OPTION: u16 = 15;

/// The UDP payload size advertised (RFC 6891 section 6.2.5; 1232 avoids IP fragmentation, as
/// the DNS flag day 2020 recommends).
const UDP_PAYLOAD: u16 = 1232;

/// Largest UDP reply read; a larger one arrives truncated and is asked again over TCP.
const UDP_BUFFER: usize = 4096;

/// Questions to the configured (loopback) resolvers.
pub(super) struct Stub {
    /// `dns.nameservers`, all loopback (checked at configuration load).
    servers: Vec<SocketAddr>,
    /// Bound for each exchange.
    timeout: Duration,
    /// Rounds over all servers before giving up.
    attempts: usize,
}

/// An extended DNS error from a reply (RFC 8914 section 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExtendedError {
    /// INFO-CODE (RFC 8914 section 4).
    pub code: u16,
    /// EXTRA-TEXT, possibly empty.
    pub text: String,
}

impl ExtendedError {
    /// True for the codes that say the data failed DNSSEC validation (RFC 8914 sections
    /// 4.6–4.13: DNSSEC Indeterminate, Bogus, Signature Expired, Signature Not Yet Valid,
    /// DNSKEY Missing, RRSIGs Missing, No Zone Key Bit Set, NSEC Missing).
    pub fn is_dnssec_failure(&self) -> bool {
        (5..=12).contains(&self.code)
    }

    /// The registered name of the code (RFC 8914 section 5.2).
    pub fn name(&self) -> &'static str {
        match self.code {
            0 => "Other Error",
            1 => "Unsupported DNSKEY Algorithm",
            2 => "Unsupported DS Digest Type",
            3 => "Stale Answer",
            4 => "Forged Answer",
            5 => "DNSSEC Indeterminate",
            6 => "DNSSEC Bogus",
            7 => "Signature Expired",
            8 => "Signature Not Yet Valid",
            9 => "DNSKEY Missing",
            10 => "RRSIGs Missing",
            11 => "No Zone Key Bit Set",
            12 => "NSEC Missing",
            13 => "Cached Error",
            14 => "Not Ready",
            15 => "Blocked",
            16 => "Censored",
            17 => "Filtered",
            18 => "Prohibited",
            19 => "Stale NXDOMAIN Answer",
            20 => "Not Authoritative",
            21 => "Not Supported",
            22 => "No Reachable Authority",
            23 => "Network Error",
            24 => "Invalid Data",
            _ => "unknown code",
        }
    }
}

impl std::fmt::Display for ExtendedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "extended DNS error {} ({})", self.code, self.name())?;
        if !self.text.is_empty() {
            write!(f, ": {}", self.text)?;
        }
        Ok(())
    }
}

/// The extended DNS errors of a reply.
pub(super) fn extended_errors(reply: &Message) -> Vec<ExtendedError> {
    let Some(edns) = &reply.edns else {
        return Vec::new();
    };
    edns.options()
        .options
        .iter()
        .filter_map(|(_, option)| match option {
            EdnsOption::Unknown(EDE_OPTION, data) if data.len() >= 2 => Some(ExtendedError {
                code: u16::from_be_bytes([data[0], data[1]]),
                text: String::from_utf8_lossy(&data[2..])
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

impl Stub {
    /// A stub over `servers`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, attempts: usize) -> Stub {
        Stub {
            servers,
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// Asks `name`/`record_type` and returns the first reply; `Err` names the last network
    /// fault when no server answered.
    pub async fn query(&self, name: &Name, record_type: RecordType) -> Result<Message, String> {
        let mut last = "no nameserver configured".to_string();
        for _ in 0..self.attempts {
            for server in &self.servers {
                match self.exchange(*server, name, record_type).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Message, String> {
        let request = request(name, record_type);
        let bytes = request.to_vec().map_err(|e| format!("encoding: {e}"))?;
        let reply = tokio::time::timeout(self.timeout, udp(server, &bytes))
            .await
            .map_err(|_| format!("no reply within {:?}", self.timeout))??;
        let reply = check(&request, reply)?;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        let reply = tokio::time::timeout(self.timeout, tcp(server, &bytes))
            .await
            .map_err(|_| format!("no reply over TCP within {:?}", self.timeout))??;
        check(&request, reply)
    }
}

/// A recursive query with AD (RFC 6840 section 5.7: "the AD bit is understood") and DO
/// (RFC 3225: signatures wanted, which the self-check reads) set.
fn request(name: &Name, record_type: RecordType) -> Message {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.metadata.authentic_data = true;
    request.add_query(Query::query(name.clone(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    edns.set_dnssec_ok(true);
    request.set_edns(edns);
    request
}

/// The reply must answer this request: same ID and question (RFC 5452 section 9.1).
fn check(request: &Message, reply: Message) -> Result<Message, String> {
    if reply.metadata.id != request.metadata.id || reply.queries != request.queries {
        return Err("the reply does not match the question".into());
    }
    Ok(reply)
}

async fn udp(server: SocketAddr, request: &[u8]) -> Result<Message, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("UDP socket: {e}"))?;
    // Connected: only the server's datagrams arrive, and a closed port fails at once.
    socket
        .connect(server)
        .await
        .map_err(|e| format!("UDP connect: {e}"))?;
    socket
        .send(request)
        .await
        .map_err(|e| format!("UDP send: {e}"))?;
    let mut buf = vec![0u8; UDP_BUFFER];
    let id = u16::from_be_bytes([request[0], request[1]]);
    // Datagrams with another ID (a late reply to an earlier query) are skipped; the caller's
    // timeout bounds the loop.
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| format!("UDP receive: {e}"))?;
        if let Ok(reply) = Message::from_vec(&buf[..n]) {
            if reply.metadata.id == id {
                return Ok(reply);
            }
        }
    }
}

async fn tcp(server: SocketAddr, request: &[u8]) -> Result<Message, String> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let len = u16::try_from(request.len()).map_err(|_| "request too long".to_string())?;
    stream
        .write_u16(len)
        .await
        .map_err(|e| format!("TCP send: {e}"))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("TCP send: {e}"))?;
    // The two-byte length bounds the read (RFC 1035 section 4.2.2).
    let len = stream
        .read_u16()
        .await
        .map_err(|e| format!("TCP receive: {e}"))?;
    let mut buf = vec![0u8; usize::from(len)];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("TCP receive: {e}"))?;
    Message::from_vec(&buf).map_err(|e| format!("undecodable reply: {e}"))
}
