//! DNS servers for tests, on 127.0.0.1 (UDP and TCP on one port). Tests fill their zones and
//! point `dns.nameservers` at them, so tlsgate's real resolver code runs against zones the
//! test controls.
//!
//! * [`TestDns`]: one flat, unsigned namespace. `add_mx`, `add_ip`, `add_txt`, `add_tlsa`,
//!   `add`, `servfail`:
//!   ```ignore
//!   let dns = TestDns::start().await;
//!   dns.add_mx("example.no", 10, "mx.example.no");
//!   dns.add_ip("mx.example.no", "127.0.0.1".parse().unwrap());
//!   ```
//! * [`SignedDns`]: a DNSSEC-signed hierarchy (RFC 4033–4035) under a test root whose keys
//!   are generated in the test (ECDSA P-256, algorithm 13), signed in-process as it answers:
//!   DNSKEY at every signed apex, DS in the parent, RRSIGs over every RRset, NSEC denials
//!   (NODATA, NXDOMAIN with the wildcard proof, no-DS at insecure delegations), when the
//!   query has the DO bit. The root `.` and `test.` are signed zones from the start; `zone()`
//!   adds a child (and any missing ancestor, signed):
//!   ```ignore
//!   let pki = SignedDns::start().await;
//!   pki.zone("dane.test", Signed::Yes)
//!       .add_mx("dane.test", 10, "mx.dane.test")
//!       .add_ip("mx.dane.test", "127.0.0.1".parse().unwrap())
//!       .add_tlsa("_25._tcp.mx.dane.test", 3, 1, 1, &digest);
//!   pki.zone("plain.test", Signed::No).add_mx("plain.test", 10, "mx.plain.test");
//!   // tlsgate config: [dns] nameservers = ["{pki.addr}"], dnssec = "validate",
//!   //                 trust_anchor = "{pki.trust_anchor_file().display()}"
//!   ```
//!   Faults: `corrupt_signature(name, type)` (bogus: the RRSIG no longer verifies),
//!   `strip_dnssec(true)` (a resolver path that drops RRSIG and NSEC records),
//!   `servfail_with_ede(name, code, text)` (a validating resolver's SERVFAIL with an extended
//!   DNS error, RFC 8914). [`Unbound`] runs a real validating unbound on loopback in front of
//!   it (`dns.dnssec = "resolver"`).
//!
//! `SignedDns` derefs to its [`TestDns`], so `pki.addr` and `pki.add_*` work too; every name
//! belongs to the deepest zone whose apex is an ancestor of it.

use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSSECRData, SigInput, DNSKEY, DS, NSEC, RRSIG};
use hickory_proto::dnssec::{Algorithm, DigestType, SigningKey, TBS};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// TTL of every record served.
const TTL: u32 = 60;

/// The zone signing algorithm: ECDSA P-256 with SHA-256 (RFC 6605), fast to generate.
const ALGORITHM: Algorithm = Algorithm::ECDSAP256SHA256;

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Names that answer SERVFAIL (a broken or unreachable authority).
    servfail: HashSet<String>,
    /// Names where a query for a type without records gets no answer at all (an unreachable
    /// authority; the RFC 7208 suite's `TIMEOUT`).
    silent: HashSet<String>,
    /// Names that exist without any record (NODATA for every type, not NXDOMAIN).
    empty: HashSet<String>,
    /// Names that answer SERVFAIL with an extended DNS error (RFC 8914): (info-code, text).
    servfail_ede: HashMap<String, (u16, String)>,
    /// `SignedDns`: the zones by apex (`key()` form, "" for the root). Empty: the flat,
    /// unsigned namespace of `TestDns`.
    zones: BTreeMap<String, ZoneInfo>,
    /// RRsets whose RRSIG is served corrupted (bogus).
    corrupt: HashSet<(String, RecordType)>,
    /// Drop RRSIG and NSEC records from every reply (a DNSSEC-stripping resolver path).
    strip_dnssec: bool,
}

/// A zone of `SignedDns`: its apex and, when signed, its keys.
struct ZoneInfo {
    apex: Name,
    keys: Option<Arc<ZoneKeys>>,
}

struct ZoneKeys {
    ksk: KeyPair,
    zsk: KeyPair,
}

struct KeyPair {
    key: EcdsaSigningKey,
    dnskey: DNSKEY,
    tag: u16,
}

impl KeyPair {
    fn generate(ksk: bool) -> KeyPair {
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(ALGORITHM).expect("generate a zone key");
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, ALGORITHM).expect("load the zone key");
        let public = key.to_public_key().expect("public zone key");
        let dnskey = DNSKEY::new(true, ksk, false, public);
        let tag = dnskey.calculate_key_tag().expect("key tag");
        KeyPair { key, dnskey, tag }
    }
}

#[derive(Clone)]
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name_of(key: &str) -> Name {
    if key.is_empty() {
        Name::root()
    } else {
        Name::from_ascii(format!("{key}.")).expect("a DNS name")
    }
}

/// The zone key of a name from the wire: its labels as they are (`to_ascii` would escape
/// spaces and other characters the SPF suite puts in names), lower case.
fn raw_key(name: &Name) -> String {
    name.iter()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// `name` (trailing dot optional, "" for the root) as a DNS name whose labels are taken as
/// they are: the SPF suite's targets hold characters such as `:` and `/`.
fn target_name(name: &str) -> Name {
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return Name::root();
    }
    let mut n = Name::from_labels(name.split('.').map(str::as_bytes)).expect("a DNS name");
    n.set_fqdn(true);
    n
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
                if let Some(reply) = answer(&zone, &buf[..n], true) {
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
                        let Some(reply) = answer(&zone, &query, false) else {
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

    /// Replaces every TXT record at `name` by one with `value` (e.g. a new `_mta-sts` id).
    pub fn set_txt(&self, name: &str, value: &str) {
        self.zone
            .lock()
            .unwrap()
            .records
            .remove(&(key(name), RecordType::TXT));
        self.add_txt(name, value);
    }

    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) {
        let exchange = target_name(exchange);
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

    /// A TLSA record (RFC 6698 section 2.1) at `name`, e.g. `_25._tcp.mx.example.no`.
    pub fn add_tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) {
        self.add(
            name,
            RData::TLSA(TLSA::new(
                CertUsage::from(usage),
                Selector::from(selector),
                Matching::from(matching),
                data.to_vec(),
            )),
        );
    }

    /// A CNAME at `name` pointing to `target`.
    pub fn add_cname(&self, name: &str, target: &str) {
        self.add(name, RData::CNAME(CNAME(target_name(target))));
    }

    /// A TXT record of raw character-strings (any bytes: the SPF suite serves records with
    /// control characters and non-ASCII bytes); no strings at all is legal too.
    pub fn add_txt_strings(&self, name: &str, strings: &[Vec<u8>]) {
        self.add(
            name,
            RData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect())),
        );
    }

    /// An SPF record (RR type 99, RFC 4408 3.1.1; RFC 7208 3.1 no longer queries it).
    pub fn add_spf_rr(&self, name: &str, strings: &[Vec<u8>]) {
        let mut wire = Vec::new();
        for s in strings {
            wire.push(s.len().min(255) as u8);
            wire.extend_from_slice(&s[..s.len().min(255)]);
        }
        if wire.is_empty() {
            // No character-strings: hickory has no empty unknown RDATA; nothing to serve.
            return;
        }
        self.add(
            name,
            RData::Unknown {
                code: RecordType::Unknown(99),
                rdata: hickory_proto::rr::rdata::NULL::with(wire),
            },
        );
    }

    /// A PTR record at `name` (e.g. `4.3.2.1.in-addr.arpa`) pointing to `target`.
    pub fn add_ptr(&self, name: &str, target: &str) {
        self.add(
            name,
            RData::PTR(hickory_proto::rr::rdata::PTR(target_name(target))),
        );
    }

    /// `name` exists (NODATA for types it has no records of, never NXDOMAIN).
    pub fn add_empty(&self, name: &str) {
        self.zone.lock().unwrap().empty.insert(key(name));
    }

    /// Queries for `name` of a type it has no records of get no reply at all, over UDP and
    /// TCP: the client's own timeout decides (an unreachable or very slow authority).
    pub fn silent(&self, name: &str) {
        self.zone.lock().unwrap().silent.insert(key(name));
    }

    pub fn servfail(&self, name: &str) {
        self.zone.lock().unwrap().servfail.insert(key(name));
    }

    /// SERVFAIL for `name` with an extended DNS error (RFC 8914 section 2), as a validating
    /// resolver answers bogus data (code 6, "DNSSEC Bogus").
    pub fn servfail_with_ede(&self, name: &str, code: u16, text: &str) {
        self.zone
            .lock()
            .unwrap()
            .servfail_ede
            .insert(key(name), (code, text.to_string()));
    }
}

/// Whether a zone of [`SignedDns`] is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Keys, DNSKEY at the apex, DS in the parent: a chain of trust from the test root.
    Yes,
    /// No keys; the parent's signed NSEC proves that there is no DS (RFC 4035 section 5.2):
    /// answers are provably insecure.
    No,
}

/// A signed test hierarchy (see the module documentation).
pub struct SignedDns {
    dns: TestDns,
    /// Holds the trust anchor file.
    dir: tempfile::TempDir,
}

impl Deref for SignedDns {
    type Target = TestDns;
    fn deref(&self) -> &TestDns {
        &self.dns
    }
}

/// Adds records to one zone of a [`SignedDns`]; names are absolute and must lie in the zone.
pub struct ZoneRef<'a> {
    dns: &'a TestDns,
    apex: Name,
}

impl ZoneRef<'_> {
    fn check(&self, name: &str) {
        assert!(
            self.apex.zone_of(&name_of(&key(name))),
            "{name} is not in zone {}",
            self.apex
        );
    }

    pub fn add(&self, name: &str, data: RData) -> &Self {
        self.check(name);
        self.dns.add(name, data);
        self
    }

    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) -> &Self {
        self.check(domain);
        self.dns.add_mx(domain, preference, exchange);
        self
    }

    pub fn add_ip(&self, host: &str, ip: IpAddr) -> &Self {
        self.check(host);
        self.dns.add_ip(host, ip);
        self
    }

    pub fn add_txt(&self, name: &str, value: &str) -> &Self {
        self.check(name);
        self.dns.add_txt(name, value);
        self
    }

    pub fn add_tlsa(
        &self,
        name: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        data: &[u8],
    ) -> &Self {
        self.check(name);
        self.dns.add_tlsa(name, usage, selector, matching, data);
        self
    }

    pub fn add_cname(&self, name: &str, target: &str) -> &Self {
        self.check(name);
        self.dns.add_cname(name, target);
        self
    }
}

impl SignedDns {
    /// A test root `.` and `test.`, both signed; the root's KSK is the trust anchor.
    pub async fn start() -> SignedDns {
        let dns = TestDns::start().await;
        let pki = SignedDns {
            dns,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        pki.add_zone("", Signed::Yes);
        pki.add_zone("test", Signed::Yes);
        std::fs::write(pki.trust_anchor_file(), pki.trust_anchor_text())
            .expect("write the trust anchor file");
        pki
    }

    fn add_zone(&self, apex: &str, signed: Signed) {
        let mut zone = self.dns.zone.lock().unwrap();
        zone.zones.entry(key(apex)).or_insert_with(|| ZoneInfo {
            apex: name_of(&key(apex)),
            keys: (signed == Signed::Yes).then(|| {
                Arc::new(ZoneKeys {
                    ksk: KeyPair::generate(true),
                    zsk: KeyPair::generate(false),
                })
            }),
        });
    }

    /// The zone at `apex` (created if new, with any missing ancestor zone, signed).
    pub fn zone(&self, apex: &str, signed: Signed) -> ZoneRef<'_> {
        let apex_key = key(apex);
        let labels: Vec<&str> = apex_key.split('.').collect();
        for i in (1..labels.len()).rev() {
            self.add_zone(&labels[i..].join("."), Signed::Yes);
        }
        self.add_zone(&apex_key, signed);
        ZoneRef {
            dns: &self.dns,
            apex: name_of(&apex_key),
        }
    }

    /// `dns.trust_anchor` for tlsgate (and unbound's `trust-anchor-file`): the test root's
    /// KSK as a zone-file DNSKEY record.
    pub fn trust_anchor_file(&self) -> PathBuf {
        self.dir.path().join("root.key")
    }

    /// The trust anchor's text: `. 3600 IN DNSKEY 257 3 13 <base64>`.
    pub fn trust_anchor_text(&self) -> String {
        let zone = self.dns.zone.lock().unwrap();
        let keys = zone.zones[""]
            .keys
            .clone()
            .expect("the test root is signed");
        format!(". 3600 IN DNSKEY {}\n", keys.ksk.dnskey)
    }

    /// The test root's KSK as a DS record (`. IN DS <tag> 13 2 <hex>`), for trust anchor files
    /// with a DS line.
    pub fn trust_anchor_ds(&self) -> String {
        let zone = self.dns.zone.lock().unwrap();
        let keys = zone.zones[""]
            .keys
            .clone()
            .expect("the test root is signed");
        let digest = keys
            .ksk
            .dnskey
            .to_digest(&Name::root(), DigestType::SHA256)
            .expect("digest");
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        format!(". IN DS {} 13 2 {hex}\n", keys.ksk.tag)
    }

    /// Serves the RRSIG over `name`/`record_type` with a flipped byte: the RRset is bogus
    /// (RFC 4035 section 5.3.3: the signature does not verify).
    pub fn corrupt_signature(&self, name: &str, record_type: RecordType) {
        self.dns
            .zone
            .lock()
            .unwrap()
            .corrupt
            .insert((key(name), record_type));
    }

    /// Behaves as a resolver path that strips DNSSEC: no RRSIG and no NSEC in any reply.
    pub fn strip_dnssec(&self, strip: bool) {
        self.dns.zone.lock().unwrap().strip_dnssec = strip;
    }
}

fn answer(zone: &Mutex<Zone>, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = raw_key(question.name());
    let zone = zone.lock().unwrap();
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    if let Some(edns) = &request.edns {
        let mut reply_edns = Edns::new();
        reply_edns.set_max_payload(4096);
        reply_edns.set_dnssec_ok(edns.flags().dnssec_ok);
        response.set_edns(reply_edns);
    }
    if let Some((code, text)) = zone.servfail_ede.get(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        let mut data = code.to_be_bytes().to_vec();
        data.extend_from_slice(text.as_bytes());
        let mut edns = response.edns.take().unwrap_or_default();
        edns.options_mut().insert(EdnsOption::Unknown(15, data));
        response.set_edns(edns);
        return response.to_vec().ok();
    }
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    if zone.silent.contains(&name)
        && !zone
            .records
            .contains_key(&(name.clone(), question.query_type()))
    {
        return None;
    }
    if zone.zones.is_empty() {
        flat_answer(&zone, &name, &question, &mut response);
    } else {
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        signed_answer(
            &zone,
            &name_of(&name),
            question.query_type(),
            dnssec_ok && !zone.strip_dnssec,
            &mut response,
        );
    }
    if std::env::var_os("TESTDNS_DEBUG").is_some() {
        eprintln!(
            "testdns: {} {} do={} -> {} an={} ns={}",
            question.name(),
            question.query_type(),
            request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            response.metadata.response_code,
            response.answers.len(),
            response.authorities.len()
        );
    }
    let bytes = response.to_vec().ok()?;
    // A UDP reply larger than the client takes is truncated (RFC 1035 section 4.2.1, RFC 6891
    // section 6.2.5): the client asks again over TCP.
    let limit = request
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload().max(512)));
    if udp && bytes.len() > limit {
        response.answers.clear();
        response.authorities.clear();
        response.additionals.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(bytes)
}

/// `TestDns`: one flat namespace, no signatures.
fn flat_answer(
    zone: &Zone,
    name: &str,
    question: &hickory_proto::op::Query,
    response: &mut Message,
) {
    // CNAME chains are followed (bounded, loops included) as a recursive resolver returns
    // them (RFC 1034 3.6.2).
    let mut name = name.to_string();
    let mut owner = question.name().clone();
    for _ in 0..8 {
        let exists = zone.empty.contains(&name) || zone.records.keys().any(|(n, _)| *n == name);
        if !exists {
            response.metadata.response_code = ResponseCode::NXDomain;
            return;
        }
        if let Some(datas) = zone.records.get(&(name.clone(), question.query_type())) {
            for data in datas {
                response.add_answer(Record::from_rdata(owner.clone(), TTL, data.clone()));
            }
            return;
        }
        let cname = zone.records.get(&(name.clone(), RecordType::CNAME));
        match cname.and_then(|c| c.first()) {
            Some(RData::CNAME(target)) if question.query_type() != RecordType::CNAME => {
                response.add_answer(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(target.clone()),
                ));
                owner = target.0.clone();
                name = raw_key(&target.0);
            }
            _ => return,
        }
    }
}

/// The apex of the deepest zone that holds `name`.
fn zone_of<'z>(zone: &'z Zone, name: &Name) -> &'z ZoneInfo {
    zone.zones
        .values()
        .filter(|z| z.apex.zone_of(name))
        .max_by_key(|z| z.apex.num_labels())
        .expect("the root zone holds every name")
}

/// The zone whose data answers `name`/`record_type`: the holding zone, except DS at a zone's
/// apex, which the parent answers (RFC 4035 section 3.1.4.1).
fn answering_zone<'z>(zone: &'z Zone, name: &Name, record_type: RecordType) -> &'z ZoneInfo {
    let holder = zone_of(zone, name);
    if record_type == RecordType::DS && holder.apex == *name && !name.is_root() {
        zone_of(zone, &name.base_name())
    } else {
        holder
    }
}

/// The zones whose parent is `z` (their apexes are delegation points in `z`).
fn children<'z>(zone: &'z Zone, z: &ZoneInfo) -> Vec<&'z ZoneInfo> {
    zone.zones
        .values()
        .filter(|c| c.apex != z.apex && zone_of(zone, &c.apex.base_name()).apex == z.apex)
        .collect()
}

/// The RRset at `name`/`record_type` in zone `z`, synthesised records included: SOA, NS and
/// DNSKEY at the apex; NS and DS at a delegation point.
fn rrset(zone: &Zone, z: &ZoneInfo, name: &Name, record_type: RecordType) -> Vec<RData> {
    if let Some(child) = children(zone, z).into_iter().find(|c| c.apex == *name) {
        return match record_type {
            RecordType::NS => vec![ns_rdata(&child.apex)],
            RecordType::DS => child
                .keys
                .iter()
                .map(|k| {
                    RData::DNSSEC(DNSSECRData::DS(
                        DS::from_key(
                            &k.ksk.dnskey.public_key().clone(),
                            &child.apex,
                            DigestType::SHA256,
                        )
                        .expect("DS"),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
    }
    if zone_of(zone, name).apex != z.apex {
        return Vec::new();
    }
    if *name == z.apex {
        match record_type {
            RecordType::SOA => return vec![soa_rdata(&z.apex)],
            RecordType::NS => return vec![ns_rdata(&z.apex)],
            RecordType::DNSKEY => {
                return z
                    .keys
                    .iter()
                    .flat_map(|k| {
                        [
                            RData::DNSSEC(DNSSECRData::DNSKEY(k.ksk.dnskey.clone())),
                            RData::DNSSEC(DNSSECRData::DNSKEY(k.zsk.dnskey.clone())),
                        ]
                    })
                    .collect()
            }
            _ => {}
        }
    }
    zone.records
        .get(&(key(&name.to_ascii()), record_type))
        .cloned()
        .unwrap_or_default()
}

fn ns_rdata(apex: &Name) -> RData {
    RData::NS(NS(apex
        .prepend_label("ns")
        .unwrap_or_else(|_| apex.clone())))
}

fn soa_rdata(apex: &Name) -> RData {
    let mname = apex.prepend_label("ns").unwrap_or_else(|_| apex.clone());
    let rname = apex
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| apex.clone());
    RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, TTL))
}

/// The record types at `name` in zone `z` (for its NSEC type bitmap).
fn types_at(zone: &Zone, z: &ZoneInfo, name: &Name) -> BTreeSet<RecordType> {
    let mut types: BTreeSet<RecordType> = [
        RecordType::SOA,
        RecordType::NS,
        RecordType::DNSKEY,
        RecordType::DS,
    ]
    .into_iter()
    .filter(|t| !rrset(zone, z, name, *t).is_empty())
    .collect();
    if zone_of(zone, name).apex == z.apex {
        let k = key(&name.to_ascii());
        types.extend(
            zone.records
                .keys()
                .filter(|(n, _)| *n == k)
                .map(|(_, t)| *t),
        );
    }
    types
}

/// The owner names of zone `z` in canonical order (RFC 4034 section 6.1): the apex, its own
/// names, and its delegation points (never names below them).
fn owner_names(zone: &Zone, z: &ZoneInfo) -> Vec<Name> {
    let mut names: BTreeSet<Name> = BTreeSet::new();
    names.insert(z.apex.clone());
    for c in children(zone, z) {
        names.insert(c.apex.clone());
    }
    for (n, _) in zone.records.keys() {
        let name = name_of(n);
        if zone_of(zone, &name).apex == z.apex {
            names.insert(name);
        }
    }
    names.into_iter().collect()
}

/// The NSEC record owned by `owner` (RFC 4034 section 4): the next owner name (the apex after
/// the last) and the types present.
fn nsec_record(zone: &Zone, z: &ZoneInfo, names: &[Name], owner: &Name) -> Record {
    let i = names
        .iter()
        .position(|n| n == owner)
        .expect("owner in the chain");
    let next = names.get(i + 1).unwrap_or(&names[0]).clone();
    let mut types = types_at(zone, z, owner);
    types.insert(RecordType::RRSIG);
    types.insert(RecordType::NSEC);
    Record::from_rdata(
        owner.clone(),
        TTL,
        RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, types))),
    )
}

/// The NSEC whose owner is the last name at or before `name` in canonical order: it covers
/// `name` when `name` is not itself an owner.
fn covering<'n>(names: &'n [Name], name: &Name) -> &'n Name {
    names
        .iter()
        .rev()
        .find(|n| *n <= name)
        .unwrap_or_else(|| names.last().expect("the apex"))
}

/// Signs one RRset with the zone's ZSK (DNSKEY with the KSK), RFC 4034 section 3.
fn rrsig(
    zone: &Zone,
    keys: &ZoneKeys,
    apex: &Name,
    owner: &Name,
    record_type: RecordType,
    datas: &[RData],
) -> Record {
    let pair = if record_type == RecordType::DNSKEY {
        &keys.ksk
    } else {
        &keys.zsk
    };
    let records: Vec<Record> = datas
        .iter()
        .map(|d| Record::from_rdata(owner.clone(), TTL, d.clone()))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let input = SigInput {
        type_covered: record_type,
        algorithm: ALGORITHM,
        num_labels: owner.num_labels(),
        original_ttl: TTL,
        sig_expiration: SerialNumber::new(now + 86_400),
        sig_inception: SerialNumber::new(now - 3600),
        key_tag: pair.tag,
        signer_name: apex.clone(),
    };
    let tbs = TBS::from_input(owner, DNSClass::IN, &input, records.iter()).expect("TBS");
    let mut signature = pair.key.sign(&tbs).expect("sign");
    if zone
        .corrupt
        .contains(&(key(&owner.to_ascii()), record_type))
    {
        if let Some(last) = signature.last_mut() {
            *last ^= 0xff;
        }
    }
    Record::from_rdata(
        owner.clone(),
        TTL,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
    )
}

/// Adds an RRset (and its RRSIG when signing) to a section.
fn push_rrset(
    zone: &Zone,
    z: &ZoneInfo,
    owner: &Name,
    record_type: RecordType,
    datas: &[RData],
    dnssec: bool,
    section: &mut Vec<Record>,
) {
    for d in datas {
        section.push(Record::from_rdata(owner.clone(), TTL, d.clone()));
    }
    if let (true, Some(keys)) = (dnssec, &z.keys) {
        if !datas.is_empty() {
            section.push(rrsig(zone, keys, &z.apex, owner, record_type, datas));
        }
    }
}

/// `SignedDns`: answers from the zone that holds the name, as a resolver that knows every
/// zone would (no referrals), with signatures and NSEC denials when `dnssec`.
fn signed_answer(
    zone: &Zone,
    qname: &Name,
    record_type: RecordType,
    dnssec: bool,
    response: &mut Message,
) {
    let mut name = qname.clone();
    // CNAME chains are followed (bounded) as a recursive resolver returns them.
    for _ in 0..8 {
        let z = answering_zone(zone, &name, record_type);
        let datas = rrset(zone, z, &name, record_type);
        if !datas.is_empty() {
            let mut answers = Vec::new();
            push_rrset(zone, z, &name, record_type, &datas, dnssec, &mut answers);
            response.add_answers(answers);
            return;
        }
        let cname = rrset(zone, z, &name, RecordType::CNAME);
        if record_type != RecordType::CNAME {
            if let Some(RData::CNAME(target)) = cname.first() {
                let mut answers = Vec::new();
                push_rrset(
                    zone,
                    z,
                    &name,
                    RecordType::CNAME,
                    &cname,
                    dnssec,
                    &mut answers,
                );
                response.add_answers(answers);
                name = target.0.clone();
                continue;
            }
        }
        deny(zone, z, &name, dnssec, response);
        return;
    }
}

/// NODATA or NXDOMAIN from zone `z`, with the SOA and, when `dnssec`, the NSEC proofs
/// (RFC 4035 section 3.1.3).
fn deny(zone: &Zone, z: &ZoneInfo, name: &Name, dnssec: bool, response: &mut Message) {
    let names = owner_names(zone, z);
    let is_owner = names.contains(name);
    // An empty non-terminal exists: some owner lies below it.
    let exists = is_owner || names.iter().any(|n| n != name && name.zone_of(n));
    let mut authority = Vec::new();
    push_rrset(
        zone,
        z,
        &z.apex,
        RecordType::SOA,
        &[soa_rdata(&z.apex)],
        dnssec,
        &mut authority,
    );
    let mut nsec_owners: Vec<Name> = Vec::new();
    if exists {
        nsec_owners.push(if is_owner {
            name.clone()
        } else {
            covering(&names, name).clone()
        });
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
        nsec_owners.push(covering(&names, name).clone());
        // The closest encloser: the longest existing ancestor; no wildcard below it.
        let mut encloser = name.base_name();
        while encloser.num_labels() > z.apex.num_labels()
            && !names.iter().any(|n| encloser.zone_of(n))
        {
            encloser = encloser.base_name();
        }
        if let Ok(wildcard) = encloser.prepend_label("*") {
            let owner = covering(&names, &wildcard).clone();
            if !nsec_owners.contains(&owner) {
                nsec_owners.push(owner);
            }
        }
    }
    if dnssec && z.keys.is_some() {
        for owner in nsec_owners {
            let nsec = nsec_record(zone, z, &names, &owner);
            push_rrset(
                zone,
                z,
                &owner,
                RecordType::NSEC,
                &[nsec.data],
                dnssec,
                &mut authority,
            );
        }
    }
    response.add_authorities(authority);
}

/// A validating unbound (NLnet Labs) on a free 127.0.0.1 port, forwarding to a test server
/// and validating from its trust anchor: `dns.dnssec = "resolver"` against a real resolver.
/// Installed by scripts/test.sh (Debian package `unbound`). Killed when dropped.
pub struct Unbound {
    pub addr: SocketAddr,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Unbound {
    /// Starts unbound forwarding everything to `upstream` with `trust_anchor` (a zone-file
    /// DNSKEY file); waits (bounded) until it answers.
    pub async fn start(upstream: SocketAddr, trust_anchor: &Path) -> Unbound {
        let binary = [
            "/usr/sbin/unbound",
            "/usr/local/sbin/unbound",
            "/usr/bin/unbound",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("unbound is not installed (scripts/test.sh installs the Debian package `unbound`)");
        let mut last_error = String::new();
        // A port found free may be taken before unbound binds it: a few tries.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = {
                let (udp, _tcp) = bind_udp_and_tcp().await;
                udp.local_addr().unwrap().port()
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = dir.path().join("unbound.conf");
            std::fs::write(
                &config,
                unbound_config(dir.path(), port, upstream, trust_anchor),
            )
            .expect("write unbound.conf");
            let log = std::fs::File::create(dir.path().join("unbound.log")).expect("log file");
            let mut child = std::process::Command::new(binary)
                .arg("-d")
                .arg("-c")
                .arg(&config)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn unbound");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if probe(addr).await {
                    return Unbound { addr, child, dir };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error =
                std::fs::read_to_string(dir.path().join("unbound.log")).unwrap_or_default();
        }
        panic!("unbound did not start on loopback: {last_error}");
    }
}

impl Unbound {
    /// unbound's log so far (validation failures at `val-log-level: 2`), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One query to `addr` (any answer means it is up), bounded to half a second.
async fn probe(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    let mut query = Message::query();
    query.add_query(hickory_proto::op::Query::query(
        Name::root(),
        RecordType::SOA,
    ));
    query.metadata.recursion_desired = true;
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    if socket.send_to(&bytes, addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await,
        Ok(Ok(_))
    )
}

fn unbound_config(dir: &Path, port: u16, upstream: SocketAddr, trust_anchor: &Path) -> String {
    format!(
        r#"server:
    interface: 127.0.0.1
    port: {port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    trust-anchor-file: "{anchor}"
    module-config: "validator iterator"
    harden-dnssec-stripped: yes
    qname-minimisation: no
    aggressive-nsec: no
    prefetch: no
    ede: yes
    # unbound answers the special-use "test." itself (RFC 6761 section 6.2) unless told not to.
    local-zone: "test." nodefault
    val-permissive-mode: no
    num-threads: 1
    outgoing-range: 64
    so-reuseport: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {ip}@{up_port}
"#,
        dir = dir.display(),
        anchor = trust_anchor.display(),
        ip = upstream.ip(),
        up_port = upstream.port(),
    )
}
