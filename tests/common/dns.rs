//! An authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP on one port). Tests fill
//! its zone with MX / A / AAAA / TXT / TLSA records and point `dns.nameservers` at it, so
//! tlsgate's real resolver code runs against zones the test controls.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Names that answer SERVFAIL (a broken or unreachable authority).
    servfail: HashSet<String>,
}

#[derive(Clone)]
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1 (DNS answers on both).
/// The kernel picks a UDP port; the same number may be taken for TCP by another test, so a
/// collision means another try on a new port (bounded: a machine where 200 tries all collide
/// has a real problem worth a panic).
pub async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    let mut last = None;
    for _ in 0..200 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind UDP 127.0.0.1:0");
        let addr = udp.local_addr().expect("UDP local address");
        match TcpListener::bind(addr).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last = Some(e),
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 200 tries: {last:?}");
}

impl TestDns {
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().unwrap();
        let dns = TestDns {
            addr,
            zone: Arc::default(),
        };
        let zone = dns.zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = answer(&zone, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let zone = dns.zone.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let zone = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut query = vec![0u8; len as usize];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&zone, &query) else {
                            return;
                        };
                        let _ = stream.write_u16(reply.len() as u16).await;
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        dns
    }

    pub fn add(&self, name: &str, data: RData) {
        let record_type = data.record_type();
        self.zone
            .lock()
            .unwrap()
            .records
            .entry((key(name), record_type))
            .or_default()
            .push(data);
    }

    /// A TXT record, split into 255-byte character-strings as DNS requires.
    pub fn add_txt(&self, name: &str, value: &str) {
        let parts = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RData::TXT(TXT::new(parts)));
    }

    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) {
        let exchange = Name::from_ascii(format!("{}.", exchange.trim_end_matches('.'))).unwrap();
        self.add(domain, RData::MX(MX::new(preference, exchange)));
    }

    /// The null MX of RFC 7505: "this domain accepts no mail".
    pub fn add_null_mx(&self, domain: &str) {
        self.add(domain, RData::MX(MX::new(0, Name::root())));
    }

    pub fn add_ip(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(host, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(host, RData::AAAA(AAAA(v6))),
        }
    }

    pub fn servfail(&self, name: &str) {
        self.zone.lock().unwrap().servfail.insert(key(name));
    }
}

fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = key(&question.name().to_ascii());
    let zone = zone.lock().unwrap();
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    let exists = zone.records.keys().any(|(n, _)| *n == name);
    if !exists {
        response.metadata.response_code = ResponseCode::NXDomain;
        return response.to_vec().ok();
    }
    if let Some(datas) = zone.records.get(&(name, question.query_type())) {
        for data in datas {
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                data.clone(),
            ));
        }
    }
    response.to_vec().ok()
}
