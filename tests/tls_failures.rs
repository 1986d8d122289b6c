//! Every TLS failure is a TLS failure, named precisely (issue 12 item 4).
//!
//! RFC 3207 4: after `STARTTLS` the session is the TLS negotiation until the handshake is done
//! and the capabilities are learnt again (4.2). Everything from sending `STARTTLS` up to and
//! including the first reply after the handshake is therefore the TLS attempt: an MX that
//! closes after its `220`, one that never answers, and a TLS 1.3 MX that demands a client
//! certificate (RFC 8446 4.4.2.4: the alert arrives at the client's first read after its
//! Finished) must give a listed domain the `4.7.x` deferral, warn log, audit entry, metric and
//! early delay DSN of T3/T6, and an unlisted (`may`) domain the plaintext retry. Reasons name
//! the certificate at fault (an intermediate, not "certificate expired"), and a next hop
//! written as an IP address is validated against the certificate's iPAddress subjectAltName
//! (RFC 5280 4.2.1.6).

mod common;

use common::mx_sink::{Behaviour, Sink};
use common::relay::*;
use common::SmtpClient;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A relay whose domain list names `partner.test` (MX `mx1.partner.test` at [`MX1`]), retrying
/// every second and warning senders about TLS trouble after one second; `other.test` is not
/// listed and has the same MX. `delivery` adds `[delivery]` keys.
async fn listed(delivery: &str) -> (Setup, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tvungen-tls.csv");
    std::fs::write(
        &list,
        "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt;Støtte for krav 5.2.4\n\
         Partner AS;999888777;partner.test;2026-01-05;Ja\n",
    )
    .unwrap();
    let s = setup_with(
        "tls_failure_warning_after = \"1s\"",
        &format!("retry_schedule = [\"1s\"]\n{delivery}"),
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    s.dns.add_mx("other.test", 10, "mx1.partner.test");
    (s, dir)
}

/// Everything the audit log holds, as text.
fn audit_text(s: &Setup) -> String {
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(&s.relay.config.audit.dir) else {
        return text;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    text
}

/// Submits to the listed domain, waits for the early delay DSN and checks it, that nothing
/// reached the MX, and that the failure was counted under `label` and audited with `reason`.
async fn expect_listed_tls_deferral(s: &Setup, mx: &Sink, status: &str, reason: &str, label: &str) {
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    let reply = client
        .send_mail(
            "kari@example.no",
            &["ola@partner.test"],
            &common::message("secret"),
        )
        .await;
    assert_eq!(reply.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.subject, "Delayed Mail (still being retried)");
    assert_eq!(dsn.field(1, "Status"), Some(status), "{}", dsn.human);
    assert!(
        dsn.human.contains(reason),
        "the DSN must name the reason {reason:?}: {}",
        dsn.human
    );
    assert!(dsn.human.contains("TLS required (verify)"), "{}", dsn.human);
    assert!(
        !dsn.human.contains("connection lost") && !dsn.human.contains("timeout waiting"),
        "not a plain connection failure: {}",
        dsn.human
    );
    assert!(mx.messages().is_empty(), "nothing delivered");
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "no transaction over plaintext: {:?}",
        mx.commands()
    );
    let state = wait_for_state(s, |st| st.delay_notified).await;
    assert!(state.tls_deferral, "recorded as a TLS deferral");
    assert_eq!(state.last_status.as_deref(), Some(status));
    let metrics = s.relay.running().metrics();
    assert!(
        metrics.tls_failures.with_label_values(&[label]).get() >= 1,
        "tlsgate_tls_failures_total{{reason={label:?}}} counted: {}",
        metrics.render()
    );
    wait_until(
        || {
            audit_text(s)
                .lines()
                .any(|l| l.contains("\"event\":\"tls_failure\"") && l.contains(reason))
        },
        "a tls_failure audit entry with the reason",
    )
    .await;
}

/// Submits to the unlisted `other.test` and expects it delivered in plaintext on a second
/// connection, after the failed TLS attempt on the first (Postfix's behaviour for `may`).
async fn expect_plaintext_retry(s: &Setup, mx: &Sink) {
    s.submit("kari@example.no", &["per@other.test"], "may")
        .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["per@other.test".to_string()]);
    assert_eq!(got[0].tls, None, "delivered in plaintext");
    assert_eq!(
        got[0].connection, 1,
        "on the retry, not the first connection"
    );
    let starttls = mx
        .commands()
        .iter()
        .filter(|c| c.eq_ignore_ascii_case("STARTTLS"))
        .count();
    assert_eq!(starttls, 1, "one TLS attempt, then plaintext");
    s.wait_queue_empty().await;
}

fn closing_after_220() -> Behaviour {
    Behaviour {
        close_after_starttls: true,
        ..Behaviour::default()
    }
}

fn silent_at_starttls() -> Behaviour {
    Behaviour {
        ignore_starttls: true,
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn closed_after_220_to_starttls_is_a_tls_failure_for_a_listed_domain() {
    let (s, _dir) = listed("").await;
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], closing_after_220())
        .await;
    expect_listed_tls_deferral(
        &s,
        &mx,
        "4.7.5",
        "server closed the connection after its 220 to STARTTLS",
        "handshake_aborted",
    )
    .await;
}

#[tokio::test]
async fn closed_after_220_to_starttls_is_retried_in_plaintext_for_may() {
    let (s, _dir) = listed("").await;
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], closing_after_220())
        .await;
    expect_plaintext_retry(&s, &mx).await;
}

#[tokio::test]
async fn no_reply_to_starttls_is_a_tls_failure_for_a_listed_domain() {
    let (s, _dir) = listed("command_timeout = \"1s\"").await;
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], silent_at_starttls())
        .await;
    // RFC 3463 X.7.4: STARTTLS offered but never answered is TLS not available.
    expect_listed_tls_deferral(
        &s,
        &mx,
        "4.7.4",
        "no reply to STARTTLS within 1s",
        "starttls_no_reply",
    )
    .await;
}

#[tokio::test]
async fn no_reply_to_starttls_is_retried_in_plaintext_for_may() {
    let (s, _dir) = listed("command_timeout = \"1s\"").await;
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], silent_at_starttls())
        .await;
    expect_plaintext_retry(&s, &mx).await;
}

/// An MX that demands a client certificate (tlsgate presents none), speaking `versions`.
async fn demanding_mx(s: &Setup, versions: &[&'static rustls::SupportedProtocolVersion]) -> Sink {
    let config = server_tls_demanding_client_cert(&s.relay.ca, &["mx1.partner.test"], versions);
    s.sink(
        MX1,
        Behaviour {
            tls: Some(config),
            ..Behaviour::default()
        },
    )
    .await
}

#[tokio::test]
async fn tls13_client_certificate_demand_is_a_tls_failure_for_a_listed_domain() {
    let (s, _dir) = listed("").await;
    // RFC 8446 4.4.2.4: the server's certificate_required alert follows the client's Finished,
    // so the client sees it at its first read after the handshake (the EHLO reply).
    let mx = demanding_mx(&s, &[&rustls::version::TLS13]).await;
    expect_listed_tls_deferral(
        &s,
        &mx,
        "4.7.5",
        "the server demands a client certificate (TLS alert certificate_required)",
        "client_cert_required",
    )
    .await;
}

#[tokio::test]
async fn tls12_client_certificate_demand_is_named_too() {
    let (s, _dir) = listed("").await;
    // RFC 5246 7.4.6: in TLS 1.2 the refusal comes inside the handshake.
    let mx = demanding_mx(&s, &[&rustls::version::TLS12]).await;
    expect_listed_tls_deferral(
        &s,
        &mx,
        "4.7.5",
        "the server demands a client certificate",
        "client_cert_required",
    )
    .await;
}

#[tokio::test]
async fn client_certificate_demand_is_retried_in_plaintext_for_may() {
    let (s, _dir) = listed("").await;
    let mx = demanding_mx(&s, &[&rustls::version::TLS13]).await;
    expect_plaintext_retry(&s, &mx).await;
}

/// A sink whose chain is a valid leaf under an intermediate that expired in 2021.
async fn expired_intermediate_mx(s: &Setup) -> Sink {
    let (chain, key) = s
        .relay
        .ca
        .issue_under_expired_intermediate(&["mx1.partner.test"]);
    s.sink(
        MX1,
        Behaviour {
            tls: Some(server_tls_from_pem(&chain, &key)),
            ..Behaviour::default()
        },
    )
    .await
}

#[tokio::test]
async fn an_expired_intermediate_is_named() {
    let (s, _dir) = listed("").await;
    let mx = expired_intermediate_mx(&s).await;
    // RFC 5280 6.1.3 (a)(2): every certificate of the path must be valid; the reason says
    // which one is not, and when it ended.
    expect_listed_tls_deferral(
        &s,
        &mx,
        "4.7.5",
        "intermediate certificate CN=tlsgate test intermediate expired on Fri, 01 Jan 2021",
        "cert_expired",
    )
    .await;
}

/// Runs `tlsgate probe DOMAIN --json` with the relay's configuration; returns (success, JSON).
async fn probe(s: &Setup, domain: &str) -> (bool, serde_json::Value) {
    let config = s.relay.dir.path().join("tlsgate.toml");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
    cmd.args(["probe", domain, "--json", "--timeout", "5s", "--config"])
        .arg(config)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("probe finished in time")
        .expect("probe ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe prints JSON ({e}): {stdout}"));
    (out.status.success(), json)
}

#[tokio::test]
async fn probe_shows_the_presented_certificate_of_a_failing_host() {
    let (s, _dir) = listed("").await;
    let _mx = expired_intermediate_mx(&s).await;
    let (ok, json) = probe(&s, "partner.test").await;
    assert!(!ok, "the listed domain fails: {json}");
    let host = &json[0]["hosts"][0];
    assert_eq!(host["pass"], false, "{host}");
    assert!(
        host["reason"]
            .as_str()
            .is_some_and(|r| r
                .starts_with("intermediate certificate CN=tlsgate test intermediate expired on")),
        "{host}"
    );
    // T7: what the server presented is shown although it was refused.
    assert!(host["cert_subject"].as_str().is_some(), "{host}");
    assert_eq!(
        host["cert_issuer"], "CN=tlsgate test intermediate",
        "{host}"
    );
    assert!(host["cert_not_after"].as_str().is_some(), "{host}");
    assert_eq!(
        host["cert_sha256"].as_str().map(str::len),
        Some(64),
        "{host}"
    );
}

/// Kills the Python peer when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenSSL SMTP peer (Python's ssl module) on [`MX1`] with a certificate for
/// `mx1.partner.test` from the relay's CA, speaking TLS `min`…`max` with `ciphers`.
fn openssl_peer(s: &Setup, dir: &std::path::Path, min: &str, max: &str, ciphers: &str) -> Peer {
    let (cert, key) = s.relay.ca.issue(&["mx1.partner.test"]);
    let cert_path: PathBuf = dir.join("peer.pem");
    let key_path: PathBuf = dir.join("peer.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/old_tls_smtp.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(MX1)
        .arg(s.port.to_string())
        .arg(&cert_path)
        .arg(&key_path)
        .args([min, max, ciphers])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is installed by .ci/run");
    let stdout = child.stdout.take().unwrap();
    let peer = Peer(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready", "the OpenSSL peer started");
    peer
}

#[tokio::test]
async fn no_cipher_in_common_is_said_in_words() {
    let (s, dir) = listed("").await;
    // TLS 1.2 with RSA key exchange and CBC only: nothing rustls offers (RFC 5246 7.4.1.2, the
    // server answers handshake_failure).
    let _peer = openssl_peer(&s, dir.path(), "1.2", "1.2", "AES128-SHA:AES256-SHA256");
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    let reply = client
        .send_mail(
            "kari@example.no",
            &["ola@partner.test"],
            &common::message("ciphers"),
        )
        .await;
    assert_eq!(reply.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("4.7.5"));
    assert!(
        dsn.human
            .contains("handshake_failure alert from the server: it found no cipher suite"),
        "{}",
        dsn.human
    );
    assert!(!dsn.human.contains("HandshakeFailure"), "{}", dsn.human);
}

/// A relay whose `inbound.next_hop` is `[127.0.0.9]:port` at level `verify`, and a TLS sink
/// there with a certificate for `names` from the relay's CA.
async fn ip_next_hop(names: &[&str]) -> (Setup, Sink) {
    const HOP: &str = "127.0.0.9";
    let s = setup_next_hop(
        "",
        "retry_schedule = [\"1s\"]",
        "",
        Some(&format!("[{HOP}]")),
        "verify",
    )
    .await;
    let hop = s.tls_sink(HOP, names, Behaviour::default()).await;
    (s, hop)
}

#[tokio::test]
async fn an_ip_next_hop_is_validated_against_its_ip_address_san() {
    // RFC 5280 4.2.1.6: an iPAddress subjectAltName identifies a host reached by address.
    let (s, hop) = ip_next_hop(&["127.0.0.9"]).await;
    s.submit("kari@example.no", &["bob@example.no"], "to the next hop")
        .await;
    let got = hop.wait_for_messages(1, WAIT).await;
    assert!(got[0].tls.is_some(), "delivered over TLS");
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn an_ip_next_hop_without_that_ip_address_san_is_refused_naming_it() {
    // A dNSName never stands for an address (RFC 6125 1.7.2); 127.0.0.10 is another address.
    let (s, hop) = ip_next_hop(&["mx.example.no", "127.0.0.10"]).await;
    s.submit("kari@example.no", &["bob@example.no"], "to the next hop")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"));
    let reason = state.last_reply.unwrap_or_default();
    assert!(
        reason.contains("certificate does not match 127.0.0.9"),
        "{reason}"
    );
    assert!(hop.messages().is_empty());
}

/// Delivers to the listed domain over an MX whose certificate has a key of `alg`; returns the
/// TLS version the MX saw.
async fn deliver_with_key(alg: &'static rcgen::SignatureAlgorithm) -> Option<String> {
    let (s, _dir) = listed("").await;
    let (cert, key) = s.relay.ca.issue_with(alg, &["mx1.partner.test"]);
    let mx = s
        .sink(
            MX1,
            Behaviour {
                tls: Some(server_tls_from_pem(&cert, &key)),
                ..Behaviour::default()
            },
        )
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "key types")
        .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    got[0].tls.clone()
}

#[tokio::test]
async fn an_mx_with_an_ecdsa_p521_key_is_reached() {
    // RFC 8446 4.2.3 ecdsa_secp521r1_sha512: ring can neither load nor verify P-521 keys;
    // aws-lc-rs does both (issue 12 item 4).
    let tls = deliver_with_key(&rcgen::PKCS_ECDSA_P521_SHA512).await;
    assert_eq!(tls.as_deref(), Some("TLSv1_3"));
}

#[tokio::test]
async fn an_mx_with_an_rsa_key_is_reached_with_rsa_pss_signatures() {
    // RFC 8446 4.2.3: TLS 1.3 signs with RSA only as RSASSA-PSS (rsa_pss_rsae_*).
    let tls = deliver_with_key(&rcgen::PKCS_RSA_SHA256).await;
    assert_eq!(tls.as_deref(), Some("TLSv1_3"));
}
