//! A relay under test with its own DNS and SMTP sinks, for delivery and tvungen TLS tests:
//! tlsgate relays to scripted sinks found through the test DNS; DSNs to local senders land on
//! the next-hop sink and are parsed with mail-parser.

use super::dns::TestDns;
use super::mx_sink::{Behaviour, Sink, SinkMessage};
use super::{SmtpClient, TestCa, TestServer, HOSTNAME};
use mail_parser::{MessageParser, MimeHeaders};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tlsgate::config::Config;

pub const MX1: &str = "127.0.0.2";
pub const MX2: &str = "127.0.0.3";
pub const NEXT_HOP: &str = "127.0.0.4";
pub const WAIT: Duration = Duration::from_secs(20);

/// One relay under test with its DNS, its next-hop sink (where DSNs to local senders land)
/// and the port every sink listens on.
pub struct Setup {
    pub relay: TestServer,
    pub dns: TestDns,
    pub port: u16,
    pub next_hop: Sink,
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Starts DNS, the next-hop sink and tlsgate. `delivery` replaces the `[delivery]` keys,
/// `extra` is appended (e.g. `[[policy]]` entries).
pub async fn setup(delivery: &str, extra: &str) -> Setup {
    setup_with("", delivery, extra).await
}

/// As [`setup`], with `outbound` keys added to `[outbound]`.
pub async fn setup_with(outbound: &str, delivery: &str, extra: &str) -> Setup {
    setup_full(outbound, delivery, extra, None).await
}

/// As [`setup_with`]; `next_hop_host`, when given, replaces the next hop's address in
/// `inbound.next_hop` (a name the test DNS resolves; the port stays the shared one).
pub async fn setup_full(
    outbound: &str,
    delivery: &str,
    extra: &str,
    next_hop_host: Option<&str>,
) -> Setup {
    setup_next_hop(outbound, delivery, extra, next_hop_host, "may").await
}

/// As [`setup`], against `dns` (e.g. a [`super::dns::SignedDns`]'s server) with `dns_keys`
/// added to `[dns]` (e.g. `dnssec = "validate"` and `trust_anchor`).
pub async fn setup_dnssec(dns: TestDns, dns_keys: &str, delivery: &str, extra: &str) -> Setup {
    setup_on_dns(dns, dns_keys, "", delivery, extra, None, "may").await
}

/// As [`setup_dnssec`], with `outbound` keys added to `[outbound]`.
pub async fn setup_dnssec_with(
    dns: TestDns,
    dns_keys: &str,
    outbound: &str,
    delivery: &str,
    extra: &str,
) -> Setup {
    setup_on_dns(dns, dns_keys, outbound, delivery, extra, None, "may").await
}

/// As [`setup_dnssec`], but tlsgate asks `nameserver` (e.g. a validating unbound in front of
/// `dns`) instead of `dns` itself.
pub async fn setup_behind_resolver(
    dns: TestDns,
    nameserver: SocketAddr,
    dns_keys: &str,
    delivery: &str,
    extra: &str,
) -> Setup {
    let mut behind = dns.clone();
    behind.addr = nameserver;
    let mut s = setup_on_dns(behind, dns_keys, "", delivery, extra, None, "may").await;
    s.dns = dns;
    s
}

/// As [`setup_full`], with `inbound.next_hop_tls` set to `next_hop_tls`. A timeout key in
/// `delivery` replaces the harness's default for it (TOML allows a key once).
pub async fn setup_next_hop(
    outbound: &str,
    delivery: &str,
    extra: &str,
    next_hop_host: Option<&str>,
    next_hop_tls: &str,
) -> Setup {
    setup_on_dns(
        TestDns::start().await,
        "",
        outbound,
        delivery,
        extra,
        next_hop_host,
        next_hop_tls,
    )
    .await
}

/// As [`setup`], with the inbound and outbound listeners bound to `inbound_bind` and
/// `outbound_bind` (e.g. `"[::]:0"`: a dual-stack socket) instead of `127.0.0.1:0`.
pub async fn setup_binds(inbound_bind: &str, outbound_bind: &str, extra: &str) -> Setup {
    setup_plain(extra, None, (inbound_bind, outbound_bind)).await
}

/// As [`setup`], but `inbound.next_hop` is tlsgate's own inbound listener (127.0.0.1 at the
/// shared port): mail for the local domains goes round (RFC 5321 6.3, a mail loop).
pub async fn setup_next_hop_to_self(extra: &str) -> Setup {
    setup_plain(extra, Some("127.0.0.1"), (SHARED_PORT, "127.0.0.1:0")).await
}

/// A bind address naming the shared port, filled in once that port is known.
const SHARED_PORT: &str = "127.0.0.1:{port}";

/// The harness's defaults apart from `extra`, the next hop's host and the listeners' binds.
async fn setup_plain(extra: &str, next_hop_host: Option<&str>, binds: (&str, &str)) -> Setup {
    setup_on_dns_binds(
        TestDns::start().await,
        "",
        "",
        "",
        extra,
        next_hop_host,
        "may",
        binds,
    )
    .await
}

async fn setup_on_dns(
    dns: TestDns,
    dns_keys: &str,
    outbound: &str,
    delivery: &str,
    extra: &str,
    next_hop_host: Option<&str>,
    next_hop_tls: &str,
) -> Setup {
    setup_on_dns_binds(
        dns,
        dns_keys,
        outbound,
        delivery,
        extra,
        next_hop_host,
        next_hop_tls,
        ("127.0.0.1:0", "127.0.0.1:0"),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn setup_on_dns_binds(
    dns: TestDns,
    dns_keys: &str,
    outbound: &str,
    delivery: &str,
    extra: &str,
    next_hop_host: Option<&str>,
    next_hop_tls: &str,
    (inbound_bind, outbound_bind): (&str, &str),
) -> Setup {
    let mut next_hop = None;
    for _ in 0..200 {
        let port = super::mx_sink::free_port();
        if let Ok(sink) = Sink::try_start(at(NEXT_HOP, port), Behaviour::default()).await {
            next_hop = Some((port, sink));
            break;
        }
    }
    let (port, next_hop) = next_hop.expect("a free port for the next-hop sink in 200 tries");
    let inbound_bind = inbound_bind.replace("{port}", &port.to_string());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    let ca_path = dir.path().join("test-ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let text = format!(
        r#"
[server]
hostname = "{HOSTNAME}"
data_dir = "{data}"
max_message_size = 100000
min_free_space = 0
admin_contact = "postmaster@example.no"

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
bind = "{inbound_bind}"
role = "inbound"

[[listener]]
bind = "{outbound_bind}"
role = "outbound"

[inbound]
local_domains = ["example.no"]
next_hop = "{hop}:{port}"
next_hop_tls = "{next_hop_tls}"

[outbound]
relay_networks = ["127.0.0.0/8"]
smtp_port = {port}
extra_trust_roots = ["{ca}"]
{outbound}

[dns]
nameservers = ["{dns}"]
{dns_keys}

[delivery]
{defaults}
{delivery}
{extra}
"#,
        defaults = [
            ("connect_timeout", "2s"),
            ("command_timeout", "3s"),
            ("data_timeout", "5s"),
            ("idle_timeout", "3s"),
        ]
        .iter()
        .filter(|(key, _)| !delivery.contains(&format!("{key} =")))
        .map(|(key, value)| format!("{key} = \"{value}\"\n"))
        .collect::<String>(),
        data = dir.path().join("data").display(),
        cert = cert.display(),
        key = key.display(),
        ca = ca_path.display(),
        dns = dns.addr,
        hop = next_hop_host.unwrap_or(NEXT_HOP),
    );
    let relay = TestServer::start_with_config(dir, ca, &text).await;
    Setup {
        relay,
        dns,
        port,
        next_hop,
    }
}

impl Setup {
    /// A sink on `ip` at the shared port.
    pub async fn sink(&self, ip: &str, behaviour: Behaviour) -> Sink {
        Sink::try_start(at(ip, self.port), behaviour)
            .await
            .expect("sink port free on this loopback address")
    }

    /// A TLS-capable sink with a certificate from the relay's trusted test CA.
    pub async fn tls_sink(&self, ip: &str, names: &[&str], mut behaviour: Behaviour) -> Sink {
        behaviour.tls = Some(server_tls(&self.relay.ca, names));
        self.sink(ip, behaviour).await
    }

    /// Submits a message on the outbound (smarthost) listener; returns its queue id.
    pub async fn submit(&self, from: &str, to: &[&str], subject: &str) -> String {
        let mut client = SmtpClient::connect_greeted(self.relay.outbound()).await;
        client.ehlo("exchange.example.no").await;
        let reply = client.send_mail(from, to, &super::message(subject)).await;
        assert_eq!(reply.code, 250, "{}", reply.text());
        super::queue_id(&reply)
    }

    /// One MX for `partner.test` (`mx1.partner.test` at [`MX1`]) answering as `behaviour`.
    pub async fn single_mx(&self, behaviour: Behaviour) -> Sink {
        self.dns.add_mx("partner.test", 10, "mx1.partner.test");
        self.dns.add_ip("mx1.partner.test", ip(MX1));
        self.sink(MX1, behaviour).await
    }

    /// Submits one message through the outbound listener with `MAIL FROM:<from>` followed by
    /// `mail_params` (e.g. `" SMTPUTF8"`) and raw `data` (the final `.CRLF` is added); asserts
    /// that every step was accepted.
    pub async fn submit_raw(&self, from: &str, mail_params: &str, to: &str, data: &[u8]) {
        let mut client = SmtpClient::connect_greeted(self.relay.outbound()).await;
        client.ehlo("exchange.example.no").await;
        let mail = client
            .cmd(&format!("MAIL FROM:<{from}>{mail_params}"))
            .await;
        assert_eq!(mail.code, 250, "{mail:?}");
        let rcpt = client.cmd(&format!("RCPT TO:<{to}>")).await;
        assert_eq!(rcpt.code, 250, "{rcpt:?}");
        assert_eq!(client.cmd("DATA").await.code, 354);
        client.send_raw(data).await;
        client.send_raw(b".\r\n").await;
        let end = client.read_reply().await;
        assert_eq!(end.code, 250, "{end:?}");
    }

    pub async fn wait_queue_empty(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.relay.queue_len() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue still holds {} messages",
                self.relay.queue_len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts the relay on the same data directory and configuration, its MTA-STS outcomes
    /// going to `reports` (RFC 8460).
    pub async fn restart_with_reports(
        &mut self,
        reports: Arc<dyn tlsgate::tls_report::TlsReportSink>,
    ) {
        self.relay.stop().await;
        let config: Config = self.relay.config.clone();
        self.relay.server = Some(
            tlsgate::server::start_with_reports(config, reports)
                .await
                .unwrap(),
        );
    }

    /// Restarts the relay on the same data directory and configuration.
    pub async fn restart(&mut self) {
        self.relay.stop().await;
        let config: Config = self.relay.config.clone();
        self.relay.server = Some(tlsgate::server::start(config).await.unwrap());
    }
}

pub fn server_tls(ca: &TestCa, names: &[&str]) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.issue(names);
    server_tls_from_pem(&cert, &key)
}

/// A STARTTLS server configuration from PEM texts (any certificate, even a bad one).
pub fn server_tls_from_pem(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("c.pem");
    let key_path = dir.path().join("k.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    tlsgate::tls::server_config(&cert_path, &key_path).unwrap()
}

/// A STARTTLS server configuration for `names` (certificate from `ca`) that demands a client
/// certificate issued by `ca`, speaking only `versions`.
pub fn server_tls_demanding_client_cert(
    ca: &TestCa,
    names: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.issue(names);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = tlsgate::tls::crypto_provider();
    // Client authentication is mandatory unless `allow_unauthenticated` is called.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

pub fn reply_for(rules: &'static [(&'static str, &'static str)]) -> Behaviour {
    Behaviour {
        rcpt_reply: Arc::new(move |rcpt: &str| {
            rules
                .iter()
                .find(|(who, _)| rcpt.starts_with(who))
                .map(|(_, reply)| reply.to_string())
                .unwrap_or_else(|| "250 2.1.5 ok".to_string())
        }),
        ..Behaviour::default()
    }
}

pub fn always(reply: &'static str) -> Behaviour {
    Behaviour {
        rcpt_reply: Arc::new(move |_: &str| reply.to_string()),
        ..Behaviour::default()
    }
}

/// A DSN as received: subject and the recipient groups of its delivery-status part.
pub struct Dsn {
    pub subject: String,
    pub human: String,
    pub fields: Vec<Vec<(String, String)>>,
}

impl Dsn {
    pub fn field(&self, group: usize, name: &str) -> Option<&str> {
        self.fields.get(group).and_then(|g| {
            g.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        })
    }
}

pub fn parse_dsn(message: &SinkMessage) -> Dsn {
    assert!(
        message.mail_from.starts_with("<>"),
        "DSNs come from the null sender: {}",
        message.mail_from
    );
    let parsed = MessageParser::default()
        .parse(&message.data)
        .expect("DSN parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("report")),
        "RFC 3464 report"
    );
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let subparts = parsed.parts[0].sub_parts().expect("parts").to_vec();
    let part = |i: usize| &parsed.parts[subparts[i] as usize];
    let status = String::from_utf8_lossy(part(1).contents()).replace("\r\n", "\n");
    let fields = status
        .split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            g.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .collect();
    Dsn {
        subject: parsed.subject().unwrap_or("").to_string(),
        human: part(0).text_contents().unwrap_or("").to_string(),
        fields,
    }
}

pub async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the only message's first recipient is in a state for which `done` holds;
/// returns that state. (A DSN is committed before the states that caused it, so a test that
/// saw the DSN must still wait for the state.)
pub async fn wait_for_state(
    s: &Setup,
    done: impl Fn(&tlsgate::queue::RecipientState) -> bool,
) -> tlsgate::queue::RecipientState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let store = s.relay.running().store();
        if let Some(id) = store.message_ids().unwrap().first() {
            let state = store.recipient_states(id).unwrap().remove(0);
            if done(&state) {
                return state;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state never reached"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the only message's first recipient has been deferred; returns its state.
pub async fn wait_for_deferral(s: &Setup) -> tlsgate::queue::RecipientState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let store = s.relay.running().store();
        if let Some(id) = store.message_ids().unwrap().first() {
            let state = store.recipient_states(id).unwrap().remove(0);
            if state.status == tlsgate::queue::RecipientStatus::Deferred {
                return state;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no deferral");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The content of a gzip file (at most 1 MiB).
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(1 << 20)
        .read_to_end(&mut out)
        .expect("the report is gzip");
    out
}

/// An Ed25519 DKIM key for `domain` with `selector`: written to `dir` (mode 0600), its public
/// half published in `dns`. Returns the key file, for `[[outbound.dkim]]`.
pub fn dkim_key(
    dns: &TestDns,
    dir: &std::path::Path,
    domain: &str,
    selector: &str,
) -> std::path::PathBuf {
    use mail_auth::common::crypto::Ed25519Key;
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    dns.add_txt(
        &format!("{selector}._domainkey.{domain}"),
        &format!("v=DKIM1; k=ed25519; p={}", super::base64(&public)),
    );
    let b64 = super::base64(&pkcs8);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let path = dir.join(format!("dkim-{selector}.pem"));
    std::fs::write(&path, pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
