//! Client certificates on the smarthost listener (issue 14 item 7; requirement S2 with S6):
//! `[[listener]] client_ca` / `client_cert` on an `outbound` listener. Real rustls handshakes on
//! loopback with certificates made here: a client certificate verified against the listener's
//! CA lets an internal mail server relay (in addition to `relay_networks` with `optional`,
//! instead of it with `required`); its subject is stored with the message and written into
//! `Received:` (RFC 5321 4.4). A certificate from another CA or an expired one fails the
//! handshake (RFC 8446 4.4.2.4; RFC 5280 6.1.3); a client without one on a `required` listener
//! gets `530 5.7.0` (RFC 3207 4, RFC 4954 6), even from a relay network.

mod common;

use common::mx_sink::Behaviour;
use common::relay::{self, WAIT};
use common::{base_config, SmtpClient, TestCa, TestServer, HOSTNAME};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tlsgate::config::{Config, ConfigError};

const CLIENT: &str = "exchange.example.no";

/// The client CA of the internal mail servers, written to `dir/client-ca.pem`.
fn client_ca_file(dir: &Path) -> (TestCa, PathBuf) {
    let ca = TestCa::new();
    let path = dir.join("client-ca.pem");
    std::fs::write(&path, &ca.cert_pem).unwrap();
    (ca, path)
}

/// A third listener, outbound, with `client_ca` and `client_cert = mode`.
fn cert_listener(ca: &Path, mode: &str) -> String {
    format!(
        "\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"outbound\"\nclient_ca = \"{}\"\nclient_cert = \"{mode}\"\n",
        ca.display()
    )
}

/// A test server whose third listener authenticates clients by certificate (`mode`);
/// `relay_networks` replaces the base configuration's `["127.0.0.0/8"]`.
async fn server(mode: &str, relay_networks: &str) -> (TestServer, TestCa, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new();
    let (cert, key) = server_ca.write_server_files(dir.path(), &[HOSTNAME]);
    let (client_ca, ca_path) = client_ca_file(dir.path());
    let text = base_config(dir.path(), &cert, &key, &cert_listener(&ca_path, mode)).replace(
        "relay_networks = [\"127.0.0.0/8\"]",
        &format!("relay_networks = {relay_networks}"),
    );
    let server = TestServer::start_with_config(dir, server_ca, &text).await;
    let addr = server.running().listeners()[2].1;
    (server, client_ca, addr)
}

/// Connects, says EHLO and STARTTLS with `tls`; `Ok` with the client after a second EHLO was
/// answered, `Err` with what went wrong when the handshake failed or the server closed the
/// session right after it (TLS 1.3 reports a refused client certificate at the first read).
async fn starttls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<SmtpClient, String> {
    let mut client = SmtpClient::connect_greeted(addr).await;
    client.ehlo(CLIENT).await;
    let reply = client.cmd("STARTTLS").await;
    assert_eq!(reply.code, 220, "{reply:?}");
    client
        .handshake(tls, HOSTNAME)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    client
        .send_raw(format!("EHLO {CLIENT}\r\n").as_bytes())
        .await;
    match client.read_some().await {
        Err(e) => return Err(format!("refused after the handshake: {e}")),
        Ok(0) => return Err("closed after the handshake".into()),
        Ok(_) => {}
    }
    match client.try_read_reply().await {
        Some(reply) if reply.code == 250 => Ok(client),
        Some(reply) => Err(format!("EHLO after TLS: {reply:?}")),
        None => Err("closed after the handshake".into()),
    }
}

/// A client certificate for [`CLIENT`] from `issuer`, in a configuration that trusts the
/// server's CA `server_ca`.
fn with_cert(server_ca: &TestCa, issuer: &TestCa, expired: bool) -> Arc<rustls::ClientConfig> {
    let (chain, key) = issuer.issue_client(CLIENT, "Bank AS", expired);
    server_ca.client_config_with_cert(&chain, &key)
}

fn rejected(server: &TestServer, reason: &str) -> u64 {
    server
        .running()
        .metrics()
        .messages_rejected
        .with_label_values(&["outbound", reason])
        .get()
}

/// S2: an internal mail server with a certificate from the listener's CA relays through a
/// `required` listener; the message reaches the MX, and its `Received:` field names the
/// certificate's subject and issuer (RFC 5321 4.4).
#[tokio::test]
async fn a_verified_client_certificate_relays_and_is_named_in_received() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, ca_path) = client_ca_file(dir.path());
    let s = relay::setup("", &cert_listener(&ca_path, "required")).await;
    let mx = s.single_mx(Behaviour::default()).await;
    let addr = s.relay.running().listeners()[2].1;

    let mut client = starttls(addr, with_cert(&s.relay.ca, &client_ca, false))
        .await
        .expect("a certificate from the client CA is accepted");
    let reply = client
        .send_mail(
            "alice@example.no",
            &["bob@partner.test"],
            &common::message("with a client certificate"),
        )
        .await;
    common::queue_id(&reply);
    let delivered = mx.wait_for_messages(1, WAIT).await;
    let data = String::from_utf8_lossy(&delivered[0].data).into_owned();
    assert!(
        data.contains(
            "(client certificate \"CN=exchange.example.no, O=Bank AS\" issued by \"CN=tlsgate test CA\")"
        ),
        "Received: names the client certificate:\n{data}"
    );
    assert_eq!(delivered[0].rcpts, vec!["bob@partner.test".to_string()]);
}

/// S2: the certificate is stored with the queued message (the received-TLS information).
#[tokio::test]
async fn the_client_certificate_is_stored_with_the_message() {
    let (server, client_ca, addr) = server("required", "[\"127.0.0.0/8\"]").await;
    let mut client = starttls(addr, with_cert(&server.ca, &client_ca, false))
        .await
        .expect("accepted");
    let reply = client
        .send_mail(
            "alice@example.no",
            &["bob@partner.test"],
            &common::message("kept"),
        )
        .await;
    let meta = server
        .queued_meta(&common::queue_id(&reply))
        .expect("queued (the test DNS answers nothing, so it stays)");
    let tls = meta.reception.tls.expect("TLS session");
    let cert = tls.client_certificate.expect("client certificate");
    assert_eq!(cert.subject, "CN=exchange.example.no, O=Bank AS");
    assert_eq!(cert.issuer, "CN=tlsgate test CA");
    assert!(meta
        .received_header
        .contains("client certificate \"CN=exchange.example.no, O=Bank AS\""));
}

/// S2: a certificate from a CA the listener does not trust ends the session in the handshake
/// (RFC 8446 4.4.2.4, RFC 8446 6.2: `unknown_ca`), with `optional` as with `required`; so does
/// one from an impostor CA that copies the real CA's name (its signature does not verify:
/// `decrypt_error`). Nothing is queued.
#[tokio::test]
async fn a_certificate_from_an_unknown_ca_fails_the_handshake() {
    for mode in ["required", "optional"] {
        let (server, _client_ca, addr) = server(mode, "[\"127.0.0.0/8\"]").await;
        let stranger = TestCa::named("stranger CA");
        let outcome = starttls(addr, with_cert(&server.ca, &stranger, false)).await;
        let error = outcome.err().expect("refused");
        assert!(error.contains("UnknownCA"), "{mode}: {error}");

        let impostor = TestCa::new();
        let outcome = starttls(addr, with_cert(&server.ca, &impostor, false)).await;
        let error = outcome.err().expect("refused");
        assert!(error.contains("DecryptError"), "{mode}: {error}");
        assert_eq!(server.queue_len(), 0);
    }
}

/// S2: an expired certificate from the right CA fails the handshake too (certificate_expired).
#[tokio::test]
async fn an_expired_client_certificate_fails_the_handshake() {
    let (server, client_ca, addr) = server("required", "[\"127.0.0.0/8\"]").await;
    let outcome = starttls(addr, with_cert(&server.ca, &client_ca, true)).await;
    let error = outcome.err().expect("refused");
    assert!(error.contains("CertificateExpired"), "{error}");
    assert_eq!(server.queue_len(), 0);
}

/// S2, S6: `required` means the certificate is the only way, even from a relay network: TLS
/// without a certificate gets `530 5.7.0 Client certificate required` at MAIL, plaintext gets
/// `530 5.7.0 Must issue a STARTTLS command first` naming the certificate; both are counted.
#[tokio::test]
async fn required_refuses_a_client_without_certificate_even_from_a_relay_network() {
    let (server, _client_ca, addr) = server("required", "[\"127.0.0.0/8\"]").await;

    let mut client = starttls(addr, server.ca.client_config())
        .await
        .expect("no certificate still completes the handshake");
    let mail = client.cmd("MAIL FROM:<alice@example.no>").await;
    assert_eq!((mail.code, mail.enhanced()), (530, "5.7.0"), "{mail:?}");
    assert!(
        mail.text().contains("Client certificate required"),
        "{mail:?}"
    );
    let rcpt = client.cmd("RCPT TO:<bob@partner.test>").await;
    assert_eq!(rcpt.code, 503, "no transaction was started: {rcpt:?}");

    let mut plain = SmtpClient::connect_greeted(addr).await;
    plain.ehlo(CLIENT).await;
    let mail = plain.cmd("MAIL FROM:<alice@example.no>").await;
    assert_eq!((mail.code, mail.enhanced()), (530, "5.7.0"), "{mail:?}");
    assert!(
        mail.text().contains("STARTTLS") && mail.text().contains("client certificate"),
        "{mail:?}"
    );

    assert_eq!(rejected(&server, "client_cert_required"), 2);
    assert_eq!(server.queue_len(), 0);
    // Audited as every relay refusal is (S1, S6), with the refusal's label.
    for reason in ["client_cert_required", "client_cert_needs_tls"] {
        let entry = wait_for_relay_refusal(&server, reason).await;
        assert_eq!(entry["listener"], "outbound", "{entry}");
        assert_eq!(
            entry["domain"], "example.no",
            "the sender's domain: {entry}"
        );
    }
}

/// Waits (bounded) for the audit entry of a relay refusal with `reason`; returns its event.
async fn wait_for_relay_refusal(server: &TestServer, reason: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = std::fs::read_dir(&server.config.audit.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
                    .collect::<Vec<_>>()
            })
            .find(|e| e["event"] == "relay_refused" && e["reason"] == reason);
        if let Some(entry) = found {
            return entry;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {reason} entry");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// S6 unchanged by `optional`: a client in `relay_networks` without a certificate relays as
/// before, and nothing is recorded as its certificate.
#[tokio::test]
async fn optional_without_certificate_relays_from_a_relay_network() {
    let (server, _client_ca, addr) = server("optional", "[\"127.0.0.0/8\"]").await;
    let mut client = starttls(addr, server.ca.client_config())
        .await
        .expect("no certificate completes the handshake");
    let reply = client
        .send_mail(
            "alice@example.no",
            &["bob@partner.test"],
            &common::message("no certificate"),
        )
        .await;
    let meta = server
        .queued_meta(&common::queue_id(&reply))
        .expect("queued");
    assert_eq!(meta.reception.tls.expect("TLS").client_certificate, None);
    assert!(!meta.received_header.contains("client certificate"));
}

/// S6 with S2: outside `relay_networks`, `optional` denies relaying without a certificate
/// (`554 5.7.1`, as before) and allows it with a verified one (the certificate *in addition*
/// to the relay networks).
#[tokio::test]
async fn optional_outside_relay_networks_relays_only_with_a_certificate() {
    let (server, client_ca, addr) = server("optional", "[\"192.0.2.0/24\"]").await;

    let mut anonymous = starttls(addr, server.ca.client_config())
        .await
        .expect("handshake");
    let mail = anonymous.cmd("MAIL FROM:<alice@example.no>").await;
    assert_eq!(mail.code, 250, "{mail:?}");
    let rcpt = anonymous.cmd("RCPT TO:<bob@partner.test>").await;
    assert_eq!((rcpt.code, rcpt.enhanced()), (554, "5.7.1"), "{rcpt:?}");
    assert!(rcpt.text().contains("Relay access denied"), "{rcpt:?}");
    assert_eq!(rejected(&server, "relay_denied"), 1);

    let mut certified = starttls(addr, with_cert(&server.ca, &client_ca, false))
        .await
        .expect("accepted");
    let reply = certified
        .send_mail(
            "alice@example.no",
            &["bob@partner.test"],
            &common::message("from outside the relay networks"),
        )
        .await;
    let meta = server
        .queued_meta(&common::queue_id(&reply))
        .expect("queued");
    let cert = meta.reception.tls.and_then(|t| t.client_certificate);
    assert_eq!(
        cert.map(|c| c.subject).as_deref(),
        Some("CN=exchange.example.no, O=Bank AS")
    );
}

/// SIGHUP rebuilds every listener's acceptor: the client CA is verified after a reload as
/// before it (a certificate relays, none is refused, a stranger's fails the handshake).
#[tokio::test]
async fn a_reload_keeps_the_client_certificate_verifier() {
    let (server, client_ca, addr) = server("required", "[\"127.0.0.0/8\"]").await;
    server.running().reload().expect("reload");

    let mut client = starttls(addr, with_cert(&server.ca, &client_ca, false))
        .await
        .expect("accepted after the reload");
    let reply = client
        .send_mail(
            "alice@example.no",
            &["bob@partner.test"],
            &common::message("r"),
        )
        .await;
    assert_eq!(reply.code, 250);

    let mut anonymous = starttls(addr, server.ca.client_config())
        .await
        .expect("handshake");
    let mail = anonymous.cmd("MAIL FROM:<alice@example.no>").await;
    assert_eq!((mail.code, mail.enhanced()), (530, "5.7.0"), "{mail:?}");

    let stranger = TestCa::named("stranger CA");
    let refused = starttls(addr, with_cert(&server.ca, &stranger, false)).await;
    assert!(refused.err().expect("refused").contains("UnknownCA"));
}

/// The configuration text of a test server with `listener` appended, in `dir`.
fn config_text(dir: &Path, listener: &str) -> String {
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir, &[HOSTNAME]);
    base_config(dir, &cert, &key, listener)
}

fn invalid(text: &str) -> (String, String) {
    match Config::from_toml(text, "/etc/tlsgate/tlsgate.toml") {
        Err(ConfigError::Invalid { file, key, reason }) => {
            assert_eq!(file, "/etc/tlsgate/tlsgate.toml");
            (key, reason)
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// Non-negotiable 5: `client_ca` on an inbound listener is refused at start, naming the file,
/// the key and the reason; so is `client_cert` without `client_ca`.
#[test]
fn client_certificate_keys_where_they_cannot_work_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "").replacen(
        "role = \"inbound\"\n",
        "role = \"inbound\"\nclient_ca = \"/etc/tlsgate/client-ca.pem\"\n",
        1,
    );
    let (key, reason) = invalid(&text);
    assert_eq!(key, "listener[0].client_ca");
    assert!(reason.contains("role = \"outbound\""), "{reason}");

    let text = config_text(
        dir.path(),
        "\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"outbound\"\nclient_cert = \"required\"\n",
    );
    let (key, reason) = invalid(&text);
    assert_eq!(key, "listener[2].client_cert");
    assert!(reason.contains("listener[2].client_ca"), "{reason}");

    let text = config_text(dir.path(), &cert_listener(Path::new("/x.pem"), "sometimes"));
    match Config::from_toml(&text, "t.toml") {
        Err(ConfigError::Syntax { message, .. }) => {
            assert!(message.contains("sometimes"), "{message}")
        }
        other => panic!("an unknown client_cert value is refused: {other:?}"),
    }
}

/// Non-negotiable 5: the CA file is checked at start like every certificate file (what
/// `check-config` and `serve` share): a missing file and a leaf certificate in place of a CA
/// are refused with the file, the key and the reason.
#[tokio::test]
async fn the_client_ca_file_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let path = dir.path().join("tlsgate.toml");
    std::fs::write(
        &path,
        config_text(dir.path(), &cert_listener(&missing, "optional")),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let error = match tlsgate::startup::ConfigFiles::load(&config) {
        Ok(_) => panic!("a missing client_ca is refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.starts_with(&format!(
            "{}: listener[2].client_ca: {}: cannot read: ",
            path.display(),
            missing.display()
        )),
        "{error}"
    );
    let started = tlsgate::server::start(config).await;
    assert!(started.is_err(), "serve refuses it too");
    assert!(!dir.path().join("data").exists(), "nothing created");

    // A client's own certificate given as the CA.
    let leaf = dir.path().join("leaf.pem");
    let (chain, _key) = TestCa::new().issue_client(CLIENT, "Bank AS", false);
    std::fs::write(&leaf, chain).unwrap();
    std::fs::write(
        &path,
        config_text(dir.path(), &cert_listener(&leaf, "required")),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let error = match tlsgate::startup::ConfigFiles::load(&config) {
        Ok(_) => panic!("a leaf as client_ca is refused"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("listener[2].client_ca"), "{error}");
    assert!(error.contains("is not a CA certificate"), "{error}");
}
