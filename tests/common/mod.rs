//! Shared test harness: a private CA (rcgen), an in-process tlsgate on 127.0.0.1 with its own
//! data directory, and a small SMTP client over real sockets with real rustls handshakes.
#![allow(dead_code)]

pub mod dns;
pub mod https;
pub mod mx_sink;
pub mod process;
pub mod relay;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tlsgate::config::{Config, Role};
use tlsgate::server::RunningServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait in a test: a hang fails the test instead of the CI run.
pub const STEP: Duration = Duration::from_secs(20);

/// A private certificate authority for test servers.
pub struct TestCa {
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::named("tlsgate test CA")
    }

    /// A CA whose subject is `CN=<cn>` (every [`TestCa::new`] is "tlsgate test CA").
    pub fn named(cn: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        TestCa {
            ca_cert: cert,
            ca_key: key,
            cert_pem,
        }
    }

    /// A leaf certificate for `names`, signed by this CA: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names` with a key of `alg` (e.g. ECDSA P-521, RSA), signed by this CA:
    /// (chain PEM, key PEM).
    pub fn issue_with(
        &self,
        alg: &'static rcgen::SignatureAlgorithm,
        names: &[&str],
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names` with the subject `CN=<cn>` (any text, markup included) whose
    /// validity ends `valid_for` from now: (chain PEM, key PEM).
    pub fn issue_custom(
        &self,
        names: &[&str],
        cn: &str,
        valid_for: std::time::Duration,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + valid_for;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names` whose validity ended in 2021.
    pub fn issue_expired(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names`, valid now, issued by an intermediate CA ("tlsgate test
    /// intermediate") whose validity ended in 2021: (chain PEM, leaf then intermediate; key PEM).
    pub fn issue_under_expired_intermediate(&self, names: &[&str]) -> (String, String) {
        let mid_key = rcgen::KeyPair::generate().unwrap();
        let mut mid = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        mid.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        mid.distinguished_name
            .push(rcgen::DnType::CommonName, "tlsgate test intermediate");
        mid.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        mid.not_before = rcgen::date_time_ymd(2020, 1, 1);
        mid.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let mid_cert = mid
            .signed_by(&mid_key, &self.ca_cert, &self.ca_key)
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names).unwrap();
        let leaf = leaf.signed_by(&key, &mid_cert, &mid_key).unwrap();
        (
            format!("{}{}", leaf.pem(), mid_cert.pem()),
            key.serialize_pem(),
        )
    }

    /// A client certificate (S2: an internal mail server on the smarthost listener) with the
    /// subject `CN=<cn>, O=<org>`, the dNSName `cn` and extendedKeyUsage clientAuth, signed
    /// by this CA; `expired` gives it a validity that ended in 2021: (chain PEM, key PEM).
    pub fn issue_client(&self, cn: &str, org: &str, expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// As [`TestCa::client_config`], presenting the client certificate `chain`/`key` (PEM).
    pub fn client_config_with_cert(&self, chain: &str, key: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(tlsgate::tls::crypto_provider())
            .with_protocol_versions(tlsgate::tls::PROTOCOL_VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// Writes a leaf for `names` as server.pem / server.key (mode 0600) into `dir`.
    pub fn write_server_files(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert_path, key_path)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(tlsgate::tls::crypto_provider())
            .with_protocol_versions(tlsgate::tls::PROTOCOL_VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// A tlsgate running in this process, on loopback ports chosen by the kernel.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub const HOSTNAME: &str = "mx.tlsgate.test";

/// The base configuration of a test server; `extra` is appended (more sections or keys).
pub fn base_config(dir: &Path, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "{HOSTNAME}"
data_dir = "{data}"
max_message_size = 100000
min_free_space = 0

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
bind = "127.0.0.1:0"
role = "inbound"

[[listener]]
bind = "127.0.0.1:0"
role = "outbound"

[inbound]
local_domains = ["example.no"]

# Sender authentication needs DNS; these tests serve none (tests/auth.rs covers it).
[inbound.auth]
enabled = false

[outbound]
relay_networks = ["127.0.0.0/8"]

# Nothing listens on the discard port: every lookup fails at once as a temporary error, so
# queued mail stays deferred in the queue and no test query ever leaves loopback.
[dns]
nameservers = ["127.0.0.1:9"]
{extra}
"#,
        data = dir.join("data").display(),
        cert = cert.display(),
        key = key.display(),
    )
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Starts with `extra` TOML appended to [`base_config`]. `extra` may override nothing that
    /// the base sets (TOML forbids duplicate keys); use [`TestServer::start_with_config`].
    pub async fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
        let text = base_config(dir.path(), &cert, &key, extra);
        Self::start_with_config(dir, ca, &text).await
    }

    pub async fn start_with_config(dir: tempfile::TempDir, ca: TestCa, text: &str) -> TestServer {
        let path = dir.path().join("tlsgate.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let server = tlsgate::server::start(config.clone()).await.unwrap();
        TestServer {
            server: Some(server),
            ca,
            dir,
            config,
        }
    }

    pub fn addr(&self, role: Role) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr(role).unwrap()
    }

    pub fn inbound(&self) -> SocketAddr {
        self.addr(Role::Inbound)
    }

    pub fn outbound(&self) -> SocketAddr {
        self.addr(Role::Outbound)
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_secs(5)).await;
        }
    }

    pub async fn client(&self, role: Role) -> SmtpClient {
        SmtpClient::connect(self.addr(role)).await
    }

    /// Body of a queued message, read from the store.
    pub fn queued_body(&self, id: &str) -> Option<Vec<u8>> {
        let id = tlsgate::queue::QueueId::parse(id).expect("queue id");
        self.running().store().body(&id).unwrap()
    }

    pub fn queued_meta(&self, id: &str) -> Option<tlsgate::queue::MessageMeta> {
        let id = tlsgate::queue::QueueId::parse(id).expect("queue id");
        self.running().store().message(&id).unwrap()
    }

    pub fn queue_len(&self) -> usize {
        self.running().store().message_ids().unwrap().len()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply as received: code and the text of every line (code and separators stripped).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code of the first line, e.g. "5.7.1".
    pub fn enhanced(&self) -> &str {
        self.lines
            .first()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
    }
}

/// A hand-written SMTP client: plain TCP, then optionally tokio-rustls after STARTTLS.
pub struct SmtpClient {
    io: Option<Box<dyn Io>>,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
    /// The kind of the TLS handshake, once STARTTLS is done (full or resumed).
    pub handshake_kind: Option<rustls::HandshakeKind>,
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> SmtpClient {
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        SmtpClient {
            handshake_kind: None,
            io: None,
            tcp: Some(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects from the loopback address `local` (e.g. `127.0.0.7`), so that the server
    /// sees another client address.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> SmtpClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        let tcp = tokio::time::timeout(STEP, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut c = SmtpClient {
            handshake_kind: None,
            io: None,
            tcp: Some(tcp),
            buf: Vec::new(),
        };
        let banner = c.read_reply().await;
        assert_eq!(banner.code, 220, "{banner:?}");
        c
    }

    /// Connects and reads the 220 banner.
    pub async fn connect_greeted(addr: SocketAddr) -> SmtpClient {
        let mut c = Self::connect(addr).await;
        let banner = c.read_reply().await;
        assert_eq!(banner.code, 220, "{banner:?}");
        c
    }

    /// The client socket's own address (the relay's view of the peer), before STARTTLS.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .as_ref()
            .expect("a plaintext connection")
            .local_addr()
            .expect("local address")
    }

    fn io(&mut self) -> &mut (dyn Io + '_) {
        if let Some(io) = self.io.as_mut() {
            return io.as_mut();
        }
        self.tcp.as_mut().expect("connection")
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io();
        tokio::time::timeout(STEP, io.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Reads one (possibly multi-line) reply. Panics on timeout or EOF.
    pub async fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .await
            .expect("connection closed before a reply")
    }

    /// Reads one reply; `None` when the server closed the connection first.
    pub async fn try_read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            assert!(line.len() >= 4, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes()[3] == b' ';
            lines.push((code, line[4..].to_string()));
            if last {
                break;
            }
        }
        let code = lines[0].0;
        assert!(
            lines.iter().all(|(c, _)| *c == code),
            "mixed codes {lines:?}"
        );
        Some(Reply {
            code,
            lines: lines.into_iter().map(|(_, l)| l).collect(),
        })
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let io = self.io();
            let n = tokio::time::timeout(STEP, io.read(&mut chunk))
                .await
                .expect("read timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One read into the reply buffer: `Ok(0)` at EOF, `Err` with the I/O error as the
    /// transport reports it (e.g. the TLS alert a server sent after the handshake).
    pub async fn read_some(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let io = self.io();
        let n = tokio::time::timeout(STEP, io.read(&mut chunk))
            .await
            .expect("read timed out")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The plain TCP socket, for tests that drive the bytes themselves (no TLS up, no reply
    /// bytes left unread).
    pub fn into_tcp(mut self) -> TcpStream {
        assert!(self.io.is_none(), "TLS is up");
        assert!(self.buf.is_empty(), "unread reply bytes {:?}", self.buf);
        self.tcp.take().expect("connection")
    }

    /// True when the server has closed the connection (reads EOF within STEP).
    pub async fn is_closed(&mut self) -> bool {
        self.read_line().await.is_none()
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    pub async fn ehlo(&mut self, name: &str) -> Reply {
        let r = self.cmd(&format!("EHLO {name}")).await;
        assert_eq!(r.code, 250, "{r:?}");
        r
    }

    /// STARTTLS and a real rustls handshake against the CA's roots.
    pub async fn starttls(&mut self, config: Arc<rustls::ClientConfig>, server_name: &str) {
        let r = self.cmd("STARTTLS").await;
        assert_eq!(r.code, 220, "{r:?}");
        self.handshake(config, server_name)
            .await
            .expect("TLS handshake");
    }

    /// Runs the TLS handshake on the TCP socket (after a 220 to STARTTLS).
    pub async fn handshake(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> std::io::Result<()> {
        assert!(
            self.buf.is_empty(),
            "server sent plaintext after its 220 to STARTTLS"
        );
        let tcp = self.tcp.take().expect("plain connection");
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let tls = tokio::time::timeout(STEP, connector.connect(name, tcp))
            .await
            .expect("handshake timed out")?;
        self.handshake_kind = tls.get_ref().1.handshake_kind();
        self.io = Some(Box::new(tls));
        Ok(())
    }

    /// MAIL, RCPT…, DATA and the body (already dot-stuffed, without the final dot); returns
    /// the reply to the end of data.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(r.code, 250, "MAIL: {r:?}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert_eq!(r.code, 250, "RCPT {rcpt}: {r:?}");
        }
        let r = self.cmd("DATA").await;
        assert_eq!(r.code, 354, "DATA: {r:?}");
        self.send_raw(body.as_bytes()).await;
        self.cmd(".").await
    }
}

/// The queue id at the end of "250 2.0.0 Ok: queued as ID".
pub fn queue_id(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "{reply:?}");
    reply
        .text()
        .rsplit(' ')
        .next()
        .expect("queue id in reply")
        .to_string()
}

/// A small message with CRLF line endings.
pub fn message(subject: &str) -> String {
    format!(
        "From: <sender@example.org>\r\nTo: <rcpt@example.no>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    )
}

/// Standard base64 with padding (DKIM public keys in TXT records).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
