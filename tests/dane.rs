//! DANE for SMTP (RFC 7672, D1) through the relay, against DNSSEC-signed zones served on
//! loopback (`SignedDns`, validated in-process from the test root's trust anchor) and real
//! rustls handshakes with certificates made here. Issue 12 item 6's cases: DANE-EE and DANE-TA
//! matches are delivered, a mismatch and a bogus TLSA RRset are deferred with the reason, an
//! unsigned zone falls back to `may`, `dane-only` without TLSA defers, a listed domain needs
//! DANE and PKIX, and PKIX-only TLSA records are unusable (mandatory unauthenticated TLS).

mod common;

use common::dns::{Signed, SignedDns, Unbound};
use common::mx_sink::{Behaviour, Sink};
use common::relay::{
    ip, parse_dsn, server_tls_from_pem, setup_behind_resolver, setup_dnssec, Setup, MX1, WAIT,
};
use common::TestCa;
use hickory_proto::rr::RecordType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tlsgate::queue::{RecipientState, RecipientStatus};

/// A self-signed certificate for `name` (trusted by nobody): (PEM, key PEM, SPKI SHA-256).
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let spki = Sha256::digest(key.public_key_der()).to_vec();
    (cert.pem(), key.serialize_pem(), spki)
}

/// The DER of the first certificate in a PEM text.
fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// A relay validating against `pki`'s test root; `extra` appended to its configuration.
async fn relay(pki: &SignedDns, extra: &str) -> Setup {
    setup_dnssec(
        (*pki).clone(),
        &format!(
            "dnssec = \"validate\"\ntrust_anchor = \"{}\"",
            pki.trust_anchor_file().display()
        ),
        "retry_schedule = [\"1h\"]",
        extra,
    )
    .await
}

/// `partner.test`, signed or not, with its MX `mx1.partner.test` at [`MX1`].
async fn partner(signed: Signed) -> SignedDns {
    let pki = SignedDns::start().await;
    pki.zone("partner.test", signed)
        .add_mx("partner.test", 10, "mx1.partner.test")
        .add_ip("mx1.partner.test", ip(MX1));
    pki
}

/// The TLSA owner name of the test MX: `_<port>._tcp.mx1.partner.test` (RFC 7672 2.2: the port
/// connected to).
fn tlsa_name(s: &Setup) -> String {
    format!("_{}._tcp.mx1.partner.test", s.port)
}

/// An MX sink presenting `chain_pem`.
async fn mx(s: &Setup, chain_pem: &str, key_pem: &str) -> Sink {
    s.sink(
        MX1,
        Behaviour {
            tls: Some(server_tls_from_pem(chain_pem, key_pem)),
            ..Behaviour::default()
        },
    )
    .await
}

async fn send(s: &Setup) {
    s.submit("kari@example.no", &["ola@partner.test"], "dane")
        .await;
}

/// Waits for the first recipient of the only queued message to be deferred.
async fn deferred(s: &Setup) -> RecipientState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let store = s.relay.running().store();
        if let Some(id) = store.message_ids().unwrap().first() {
            let state = store.recipient_states(id).unwrap().remove(0);
            if state.status == RecipientStatus::Deferred {
                return state;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deferral in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The audit entries of the relay (one JSON object per line).
fn audit(s: &Setup) -> Vec<serde_json::Value> {
    let mut entries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&s.relay.config.audit.dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                entries.push(v);
            }
        }
    }
    entries
}

/// Waits for the message at `sink`, sent with SNI `sni` (RFC 7672 8.1), and for its audit
/// entry saying DANE authenticated the host.
async fn expect_dane_delivery(s: &Setup, sink: &Sink, sni: &str) {
    let got = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].sni.as_deref(), Some(sni));
    let delivered = wait_audit(s, "delivered").await;
    assert_eq!(delivered["level"], "dane");
    assert_eq!(delivered["policy_source"], "dane");
}

/// Waits for an audit entry of `kind`; returns its `event` object.
async fn wait_audit(s: &Setup, kind: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = audit(s)
            .into_iter()
            .map(|e| e["event"].clone())
            .find(|e| e["event"] == kind)
        {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} audit entry: {:?}",
            audit(s)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// RFC 7672 3.1.1: a DANE-EE(3 1 1) record matching the server's key authenticates it, with no
/// name or CA check: a self-signed certificate is delivered to over TLS, source `dane`.
#[tokio::test]
async fn dane_ee_match_is_delivered() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("not-the-mx-name.example");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let got = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].tls.as_deref(), Some("TLSv1_3"));
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "dane");
    assert_eq!(delivered["policy_source"], "dane");
    let tls = wait_audit(&s, "tls_delivery").await;
    assert_eq!(
        tls["cert_sha256"],
        hex(&Sha256::digest(der(&cert))),
        "the audit names the certificate"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 7672 3.1.2 and 3.2.2: a DANE-TA(2 0 1) record for a CA nobody else trusts, presented in
/// the chain, authenticates a server certificate that names the MX host.
#[tokio::test]
async fn dane_ta_match_with_the_right_name_is_delivered() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let private_ca = TestCa::new();
    let (leaf, key) = private_ca.issue(&["mx1.partner.test"]);
    let chain = format!("{leaf}{}", private_ca.cert_pem);
    pki.zone("partner.test", Signed::Yes).add_tlsa(
        &tlsa_name(&s),
        2,
        0,
        1,
        &Sha256::digest(der(&private_ca.cert_pem)),
    );
    let sink = mx(&s, &chain, &key).await;
    send(&s).await;
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "dane");
    assert_eq!(delivered["policy_source"], "dane");
}

/// D5 `resolver` mode: the same DANE-EE delivery with a real validating unbound on loopback in
/// front of the signed zones; tlsgate trusts its AD bit.
#[tokio::test]
async fn dane_through_a_validating_resolver() {
    let pki = partner(Signed::Yes).await;
    let unbound = Unbound::start(pki.addr, &pki.trust_anchor_file()).await;
    let s = setup_behind_resolver(
        (*pki).clone(),
        unbound.addr,
        "dnssec = \"resolver\"",
        "retry_schedule = [\"1h\"]",
        "",
    )
    .await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    assert_eq!(
        sink.wait_for_messages(1, WAIT).await.len(),
        1,
        "{}",
        unbound.log()
    );
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "dane");
    assert_eq!(delivered["policy_source"], "dane");
}

/// RFC 7672 3.1: usable records that match nothing: the host is not used, the recipient is
/// deferred (4.7.5) and the early delay DSN names the mismatch; nothing reaches the MX.
#[tokio::test]
async fn tlsa_matching_nothing_is_deferred_with_the_reason_in_the_dsn() {
    let pki = partner(Signed::Yes).await;
    let s = common::relay::setup_dnssec_with(
        (*pki).clone(),
        &format!(
            "dnssec = \"validate\"\ntrust_anchor = \"{}\"",
            pki.trust_anchor_file().display()
        ),
        "tls_failure_warning_after = \"1s\"",
        "retry_schedule = [\"1s\"]",
        "",
    )
    .await;
    let (cert, key, _) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &[0x5a; 32]);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reason = state.last_reply.clone().unwrap_or_default();
    assert!(
        reason.contains("no TLSA record matched the certificate"),
        "{reason}"
    );
    assert!(sink.messages().is_empty());
    let failure = wait_audit(&s, "tls_failure").await;
    assert_eq!(failure["policy_source"], "dane");
    assert_eq!(failure["level"], "dane");
    // T6: the sender's early delay DSN names the reason.
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Action"), Some("delayed"));
    assert_eq!(dsn.field(1, "Status"), Some("4.7.5"));
    assert!(
        dsn.human.contains("no TLSA record matched the certificate"),
        "{}",
        dsn.human
    );
}

/// D5: a TLSA RRset whose signature does not validate is bogus: the host is skipped with a
/// temporary failure, never used without DANE.
#[tokio::test]
async fn bogus_tlsa_signature_is_deferred() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki);
    pki.corrupt_signature(&tlsa_name(&s), RecordType::TLSA);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reason = state.last_reply.clone().unwrap_or_default();
    assert!(reason.contains("TLSA lookup failed"), "{reason}");
    assert!(reason.contains("bogus"), "{reason}");
    assert_eq!(
        sink.connections(),
        0,
        "the host with bogus TLSA was contacted"
    );
}

/// RFC 7672 2.2: TLSA records in an unsigned zone do not count: the domain's other policy
/// (`may`) applies, and a certificate that matches no record is fine.
#[tokio::test]
async fn insecure_zone_with_tlsa_falls_back_to_may() {
    let pki = partner(Signed::No).await;
    let s = relay(&pki, "").await;
    let (cert, key, _) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::No)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &[0x5a; 32]);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "may");
    assert_eq!(delivered["policy_source"], "opportunistic");
}

/// Postfix's `dane-only`: without usable DNSSEC-secure TLSA records the mail waits.
#[tokio::test]
async fn dane_only_without_tlsa_is_deferred() {
    let pki = partner(Signed::Yes).await;
    let s = relay(
        &pki,
        "[[policy]]\ndomain = \"partner.test\"\ntls = \"dane-only\"",
    )
    .await;
    let (cert, key, _) = self_signed("mx1.partner.test");
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reason = state.last_reply.clone().unwrap_or_default();
    assert!(
        reason.contains("dane-only policy but no usable DNSSEC-secure TLSA records"),
        "{reason}"
    );
    assert_eq!(sink.connections(), 0);
}

/// T2, T9: a listed domain with a matching TLSA record still needs a chain to a trusted root:
/// a self-signed certificate that DANE alone would accept is refused (deferred).
#[tokio::test]
async fn listed_domain_with_valid_tlsa_but_untrusted_certificate_is_deferred() {
    let pki = partner(Signed::Yes).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "partner.test\n").unwrap();
    let s = relay(
        &pki,
        &format!("[domain_list]\npath = \"{}\"", list.display()),
    )
    .await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reason = state.last_reply.clone().unwrap_or_default();
    assert!(reason.contains("TLS required (verify)"), "{reason}");
    assert!(reason.contains("not trusted"), "{reason}");
    assert!(sink.messages().is_empty());
    let failure = wait_audit(&s, "tls_failure").await;
    assert_eq!(failure["policy_source"], "list");
}

/// The same listed domain with a certificate from a trusted CA that matches the TLSA record is
/// delivered: DANE *and* verify.
#[tokio::test]
async fn listed_domain_with_tlsa_and_a_trusted_certificate_is_delivered() {
    let pki = partner(Signed::Yes).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "partner.test\n").unwrap();
    let s = relay(
        &pki,
        &format!("[domain_list]\npath = \"{}\"", list.display()),
    )
    .await;
    let (cert, key) = s.relay.ca.issue(&["mx1.partner.test"]);
    let leaf = der(&cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let spki = Sha256::digest(parsed.public_key().raw);
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "verify");
    assert_eq!(delivered["policy_source"], "list");
}

/// RFC 7672 3.1.3 and 2.2: PKIX-TA/PKIX-EE records are unusable; a TLSA RRset with only those
/// means TLS is required but not authenticated: delivered over TLS to a certificate that
/// matches nothing, and not delivered in plaintext to an MX without STARTTLS.
#[tokio::test]
async fn pkix_only_tlsa_is_unusable_and_requires_unauthenticated_tls() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 1, 1, 1, &spki)
        .add_tlsa(&tlsa_name(&s), 0, 0, 1, &[0x11; 32]);
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    let got = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].tls.as_deref(), Some("TLSv1_3"));
    let delivered = wait_audit(&s, "delivered").await;
    assert_eq!(delivered["level"], "encrypt");
    assert_eq!(delivered["policy_source"], "dane");
}

/// The other half: with unusable records only, an MX without STARTTLS is not used.
#[tokio::test]
async fn pkix_only_tlsa_never_goes_plaintext() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 1, 1, 1, &[0x11; 32]);
    let sink = s
        .sink(
            MX1,
            Behaviour {
                advertise_starttls: false,
                ..Behaviour::default()
            },
        )
        .await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.4"), "{state:?}");
    assert!(sink.messages().is_empty());
}

/// Runs `tlsgate probe partner.test --json` against the relay's configuration file.
async fn probe(s: &Setup) -> (bool, serde_json::Value, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
    cmd.args([
        "probe",
        "partner.test",
        "--json",
        "--timeout",
        "5s",
        "--config",
    ])
    .arg(s.relay.dir.path().join("tlsgate.toml"))
    .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("probe finished in time")
        .expect("probe ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe JSON: {e}\n{stdout}\n{stderr}"));
    (out.status.success(), json, stderr)
}

/// Issue 12 item 5: `probe` shows per MX the DNSSEC status, the TLSA records and the DANE
/// verdict, and says why none matched; it decides exactly as delivery does.
#[tokio::test]
async fn probe_reports_dnssec_tlsa_and_the_dane_verdict() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &spki)
        .add_tlsa(&tlsa_name(&s), 1, 1, 1, &spki);
    let _sink = mx(&s, &cert, &key).await;
    let (ok, report, stderr) = probe(&s).await;
    assert!(ok, "{report}\n{stderr}");
    assert!(stderr.contains("dnssec: validate"), "{stderr}");
    let host = &report[0]["hosts"][0];
    assert_eq!(host["pass"], true, "{host}");
    assert_eq!(host["level"], "dane");
    assert_eq!(host["policy_source"], "dane");
    assert_eq!(host["mx_dnssec"], "secure");
    let mut tlsa = vec![
        format!("secure: 3 1 1 {}", hex(&spki)),
        format!("secure: 1 1 1 {} (unusable)", hex(&spki)),
    ];
    let mut got: Vec<String> = host["tlsa"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    tlsa.sort();
    got.sort();
    assert_eq!(got, tlsa);
    assert_eq!(
        host["reason"],
        format!("certificate matches TLSA 3 1 1 {} (DANE)", hex(&spki))
    );
}

/// A certificate that matches no record fails the probe, saying why.
#[tokio::test]
async fn probe_says_why_no_tlsa_record_matched() {
    let pki = partner(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, _) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes)
        .add_tlsa(&tlsa_name(&s), 3, 1, 1, &[0x5a; 32]);
    let _sink = mx(&s, &cert, &key).await;
    let (ok, report, _) = probe(&s).await;
    assert!(!ok, "{report}");
    // The domain's line shows the policy its MX host got, not the base `may`.
    assert_eq!(report[0]["level"], "dane", "{report}");
    assert_eq!(
        report[0]["reason"], "no MX host meets the dane policy",
        "{report}"
    );
    let host = &report[0]["hosts"][0];
    assert_eq!(host["pass"], false);
    assert!(
        host["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no TLSA record matched the certificate")),
        "{host}"
    );
}

/// `partner.test` (signed) whose MX `mx1.partner.test` is a CNAME of `real.hosting.test`, at
/// [`MX1`] in `hosting.test`, signed or not.
async fn partner_behind_cname(target_zone: Signed) -> SignedDns {
    let pki = SignedDns::start().await;
    pki.zone("partner.test", Signed::Yes)
        .add_mx("partner.test", 10, "mx1.partner.test")
        .add_cname("mx1.partner.test", "real.hosting.test");
    pki.zone("hosting.test", target_zone)
        .add_ip("real.hosting.test", ip(MX1));
    pki
}

/// The TLSA owner name for `host` at the port connected to.
fn tlsa_name_of(s: &Setup, host: &str) -> String {
    format!("_{}._tcp.{host}", s.port)
}

/// RFC 7672 2.2.3: the MX host is an alias and the whole chain is signed, so the TLSA base
/// domain is the CNAME-expanded name; DANE-TA's reference identifiers include it (3.2.2), and
/// the SNI is the TLSA base domain (8.1). The certificate names only `real.hosting.test`.
#[tokio::test]
async fn tlsa_at_the_cname_expanded_mx_host_is_used() {
    let pki = partner_behind_cname(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let private_ca = TestCa::new();
    let (leaf, key) = private_ca.issue(&["real.hosting.test"]);
    let chain = format!("{leaf}{}", private_ca.cert_pem);
    pki.zone("hosting.test", Signed::Yes).add_tlsa(
        &tlsa_name_of(&s, "real.hosting.test"),
        2,
        0,
        1,
        &Sha256::digest(der(&private_ca.cert_pem)),
    );
    let sink = mx(&s, &chain, &key).await;
    send(&s).await;
    expect_dane_delivery(&s, &sink, "real.hosting.test").await;
}

/// RFC 7672 2.2.3: with no TLSA records at the expanded name, the original MX host name is
/// tried: DANE-EE there authenticates the server, and the SNI is the original name (8.1).
#[tokio::test]
async fn tlsa_only_at_the_original_mx_host_name_is_used() {
    let pki = partner_behind_cname(Signed::Yes).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes).add_tlsa(
        &tlsa_name_of(&s, "mx1.partner.test"),
        3,
        1,
        1,
        &spki,
    );
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    expect_dane_delivery(&s, &sink, "mx1.partner.test").await;
}

/// RFC 7672 2.2.3: a signed alias whose target zone is unsigned: the expansion is insecure, so
/// the TLSA records are those at the original name only, and they apply (the alias itself is
/// signed): DANE-EE delivered, although the address records are insecure.
#[tokio::test]
async fn alias_into_an_unsigned_zone_uses_tlsa_at_the_original_name() {
    let pki = partner_behind_cname(Signed::No).await;
    let s = relay(&pki, "").await;
    let (cert, key, spki) = self_signed("mx1.partner.test");
    pki.zone("partner.test", Signed::Yes).add_tlsa(
        &tlsa_name_of(&s, "mx1.partner.test"),
        3,
        1,
        1,
        &spki,
    );
    let sink = mx(&s, &cert, &key).await;
    send(&s).await;
    expect_dane_delivery(&s, &sink, "mx1.partner.test").await;
}

/// RFC 7672 2.2.3 and 3.2.2: the name an insecure expansion leads to is no name of the host:
/// a DANE-TA match for a certificate that names only `real.hosting.test` (in an unsigned zone)
/// is refused, the recipient deferred with 4.7.5 and nothing delivered.
#[tokio::test]
async fn insecure_expansion_is_no_dane_ta_name() {
    let pki = partner_behind_cname(Signed::No).await;
    let s = relay(&pki, "").await;
    let private_ca = TestCa::new();
    let (leaf, key) = private_ca.issue(&["real.hosting.test"]);
    let chain = format!("{leaf}{}", private_ca.cert_pem);
    pki.zone("partner.test", Signed::Yes).add_tlsa(
        &tlsa_name_of(&s, "mx1.partner.test"),
        2,
        0,
        1,
        &Sha256::digest(der(&private_ca.cert_pem)),
    );
    let sink = mx(&s, &chain, &key).await;
    send(&s).await;
    let state = deferred(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reason = state.last_reply.clone().unwrap_or_default();
    assert!(
        reason.contains("the certificate does not match mx1.partner.test or partner.test"),
        "{reason}"
    );
    assert!(sink.messages().is_empty());
}
