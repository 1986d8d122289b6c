//! DNSSEC (D5) against real signed zones on loopback: `dns.dnssec = "validate"` (hickory's
//! in-process validation from the test root's trust anchor), `"resolver"` (a real validating
//! unbound in front of the signed server, and the AD bit / extended errors of a resolver), the
//! self-check that tells a DNSSEC-stripping resolver path from bogus data, the configuration's
//! defaults and refusals, and a bogus MX ending in a 4.7.5 deferral through the relay.

mod common;

use common::dns::{Signed, SignedDns, TestDns, Unbound};
use hickory_proto::rr::RecordType;
use std::net::IpAddr;
use std::time::Duration;
use tlsgate::dns::{DnsError, DnssecMode, DnssecStatus, HickoryResolver, Resolver, Security};
use tlsgate::domain::Domain;

const TIMEOUT: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// A signed `dane.test` (MX, A, TLSA) and an unsigned `plain.test` under the test root.
async fn hierarchy() -> SignedDns {
    let pki = SignedDns::start().await;
    pki.zone("dane.test", Signed::Yes)
        .add_mx("dane.test", 10, "mx.dane.test")
        .add_ip("mx.dane.test", ip("127.0.0.1"))
        .add_tlsa("_25._tcp.mx.dane.test", 3, 1, 1, &[0xab; 32]);
    pki.zone("plain.test", Signed::No)
        .add_mx("plain.test", 10, "mx.plain.test")
        .add_ip("mx.plain.test", ip("127.0.0.2"));
    pki
}

fn validating(pki: &SignedDns) -> HickoryResolver {
    HickoryResolver::with_dnssec(
        &[pki.addr],
        TIMEOUT,
        DnssecMode::Validate,
        Some(&pki.trust_anchor_file()),
    )
    .expect("resolver")
}

/// RFC 4035 section 5: an answer signed along a chain from the trust anchor (root KSK → root
/// DNSKEY → DS dane.test → dane.test DNSKEY → RRSIG) is secure, for MX, A and TLSA alike.
#[tokio::test]
async fn validate_secure_answers_are_secure() {
    let pki = hierarchy().await;
    let resolver = validating(&pki);
    assert_eq!(
        resolver.check_dnssec().await.expect("self-check answered"),
        DnssecStatus::Available
    );
    let mx = resolver.mx(&domain("dane.test")).await.expect("MX");
    assert_eq!(mx.value.len(), 1);
    assert_eq!(mx.value[0].exchange, "mx.dane.test");
    assert_eq!(mx.security, Security::Secure);
    let addresses = resolver.addresses("mx.dane.test").await.expect("A");
    assert_eq!(addresses.value.ips, vec![ip("127.0.0.1")]);
    assert_eq!(addresses.value.canonical, None);
    assert_eq!(addresses.security, Security::Secure);
    // A TLSA owner name that does not exist in a signed zone: securely no records (RFC 7672
    // 2.2.3), not an "unsigned" answer.
    let none = resolver
        .tlsa("_2525._tcp.mx.dane.test")
        .await
        .expect("no TLSA");
    assert!(none.value.is_empty());
    assert_eq!(none.security, Security::Secure);
    let tlsa = resolver.tlsa("_25._tcp.mx.dane.test").await.expect("TLSA");
    assert_eq!(tlsa.value.len(), 1);
    assert_eq!(
        (
            tlsa.value[0].usage,
            tlsa.value[0].selector,
            tlsa.value[0].matching
        ),
        (3, 1, 1)
    );
    assert_eq!(tlsa.security, Security::Secure);
    // A signed denial (NSEC, RFC 4035 section 3.1.3.1): no TLSA at the MX's port 587 name.
    let none = resolver
        .tlsa("_587._tcp.mx.dane.test")
        .await
        .expect("NXDOMAIN is no TLSA");
    assert!(none.value.is_empty());
}

/// RFC 4035 section 4.3 and 5.2: a zone whose parent proves (signed NSEC, no DS) that it is
/// unsigned gives insecure answers, which are still returned.
#[tokio::test]
async fn validate_unsigned_zone_is_insecure() {
    let pki = hierarchy().await;
    let resolver = validating(&pki);
    let mx = resolver.mx(&domain("plain.test")).await.expect("MX");
    assert_eq!(mx.value[0].exchange, "mx.plain.test");
    assert_eq!(mx.security, Security::Insecure);
    let addresses = resolver.addresses("mx.plain.test").await.expect("A");
    assert_eq!(addresses.value.ips, vec![ip("127.0.0.2")]);
    assert_eq!(addresses.security, Security::Insecure);
    let tlsa = resolver
        .tlsa("_25._tcp.mx.plain.test")
        .await
        .expect("no TLSA");
    assert!(tlsa.value.is_empty());
    assert_eq!(tlsa.security, Security::Insecure);
}

/// RFC 7672 section 2.2.2 needs two facts about an alias: where its chain ends and whether
/// the chain is secure. A signed alias into a signed zone: both secure, the expanded name
/// given; into an unsigned zone: the answer is insecure but the alias's own CNAME is secure.
/// The targets are IPv4-only, so the AAAA answer is a denial behind a CNAME (RFC 4035 section
/// 3.1.3), which must validate too.
#[tokio::test]
async fn validate_reports_the_cname_expansion_and_the_alias_status() {
    let pki = hierarchy().await;
    pki.zone("dane.test", Signed::Yes)
        .add_cname("alias.dane.test", "mx.dane.test")
        .add_cname("away.dane.test", "mx.plain.test")
        .add_cname("twice.dane.test", "alias.dane.test");
    pki.zone("plain.test", Signed::No)
        .add_cname("alias.plain.test", "mx.dane.test");
    let resolver = validating(&pki);
    for alias in ["alias.dane.test", "twice.dane.test"] {
        let secure = resolver.addresses(alias).await.expect("A");
        assert_eq!(secure.value.ips, vec![ip("127.0.0.1")]);
        assert_eq!(secure.value.canonical.as_deref(), Some("mx.dane.test"));
        assert_eq!(secure.security, Security::Secure);
        assert_eq!(secure.value.own, Security::Secure);
    }
    let away = resolver.addresses("away.dane.test").await.expect("A");
    assert_eq!(away.value.ips, vec![ip("127.0.0.2")]);
    assert_eq!(away.value.canonical.as_deref(), Some("mx.plain.test"));
    assert_eq!(away.security, Security::Insecure);
    assert_eq!(away.value.own, Security::Secure);
    // An unsigned alias stays insecure even when its target is signed.
    let unsigned = resolver.addresses("alias.plain.test").await.expect("A");
    assert_eq!(unsigned.value.ips, vec![ip("127.0.0.1")]);
    assert_eq!(unsigned.security, Security::Insecure);
    assert_eq!(unsigned.value.own, Security::Insecure);
    // A forged signature on the alias's target is still bogus.
    pki.corrupt_signature("mx.dane.test", RecordType::A);
    let fresh = validating(&pki);
    assert!(matches!(
        fresh.addresses("alias.dane.test").await,
        Err(DnsError::Bogus { .. })
    ));
}

/// RFC 4035 section 5.5: a signature that does not verify makes the RRset bogus: an error
/// (DnsError::Bogus), never the records.
#[tokio::test]
async fn validate_corrupted_signature_is_bogus() {
    let pki = hierarchy().await;
    pki.corrupt_signature("dane.test", RecordType::MX);
    let resolver = validating(&pki);
    assert_eq!(
        resolver.check_dnssec().await.unwrap(),
        DnssecStatus::Available
    );
    match resolver.mx(&domain("dane.test")).await {
        Err(DnsError::Bogus { name, reason }) => {
            assert_eq!(name, "dane.test");
            assert!(!reason.is_empty());
        }
        other => panic!("expected Bogus, got {other:?}"),
    }
    // The other RRsets of the zone still validate.
    let a = resolver.addresses("mx.dane.test").await.expect("A");
    assert_eq!(a.security, Security::Secure);
}

/// D5: a resolver path that strips RRSIGs must not turn into an outage. The self-check sees
/// the root DNSKEY without signatures, DANE becomes unavailable, and answers from the signed
/// zone are insecure, not bogus. Each check looks at the path as it is now (not at a cached
/// root DNSKEY): stripping that starts after a passed check is seen at the next one, and the
/// check after the path is repaired restores validation.
#[tokio::test]
async fn validate_stripping_resolver_makes_dnssec_unavailable_not_bogus() {
    let pki = hierarchy().await;
    let resolver = validating(&pki);
    assert_eq!(
        resolver.check_dnssec().await.unwrap(),
        DnssecStatus::Available
    );

    pki.strip_dnssec(true);
    let status = resolver.check_dnssec().await.expect("self-check answered");
    assert!(
        matches!(&status, DnssecStatus::Unavailable { reason } if reason.contains("signatures")),
        "{status:?}"
    );
    assert_eq!(resolver.dnssec_status(), status);
    let mx = resolver
        .mx(&domain("dane.test"))
        .await
        .expect("MX, not bogus");
    assert_eq!(mx.value[0].exchange, "mx.dane.test");
    assert_eq!(mx.security, Security::Insecure);
    let tlsa = resolver.tlsa("_25._tcp.mx.dane.test").await.expect("TLSA");
    assert_eq!(tlsa.value.len(), 1);
    assert_eq!(tlsa.security, Security::Insecure);

    pki.strip_dnssec(false);
    assert_eq!(
        resolver.check_dnssec().await.unwrap(),
        DnssecStatus::Available
    );
    assert_eq!(
        resolver.mx(&domain("dane.test")).await.unwrap().security,
        Security::Secure
    );
}

/// A trust anchor that is not the test root's (here: the IANA root KSKs built in) makes the
/// self-check fail: the test root's DNSKEY does not validate.
#[tokio::test]
async fn validate_with_a_foreign_trust_anchor_is_unavailable() {
    let pki = hierarchy().await;
    let resolver =
        HickoryResolver::with_dnssec(&[pki.addr], TIMEOUT, DnssecMode::Validate, None).unwrap();
    let status = resolver.check_dnssec().await.expect("answered");
    assert!(
        matches!(status, DnssecStatus::Unavailable { .. }),
        "{status:?}"
    );
}

/// RFC 6840 section 5.7 and D5 "resolver": a real validating resolver (unbound) on loopback in
/// front of the signed zones. Its AD bit makes answers secure; an unsigned zone's answers are
/// insecure; bogus data is SERVFAIL with extended error 6 "DNSSEC Bogus" (RFC 8914 section
/// 4.7) and becomes DnsError::Bogus.
#[tokio::test]
async fn resolver_mode_with_unbound() {
    let pki = hierarchy().await;
    pki.zone("broken.test", Signed::Yes)
        .add_mx("broken.test", 10, "mx.broken.test");
    pki.corrupt_signature("broken.test", RecordType::MX);
    let unbound = Unbound::start(pki.addr, &pki.trust_anchor_file()).await;
    let resolver =
        HickoryResolver::with_dnssec(&[unbound.addr], TIMEOUT, DnssecMode::Resolver, None)
            .expect("resolver");
    assert_eq!(
        resolver.check_dnssec().await.expect("self-check answered"),
        DnssecStatus::Available
    );
    let mx = resolver.mx(&domain("dane.test")).await;
    let mx = mx.unwrap_or_else(|e| panic!("MX: {e:?}\n{}", unbound.log()));
    assert_eq!(mx.value[0].exchange, "mx.dane.test");
    assert_eq!(mx.security, Security::Secure);
    let tlsa = resolver.tlsa("_25._tcp.mx.dane.test").await.expect("TLSA");
    assert_eq!(tlsa.value.len(), 1);
    assert_eq!(tlsa.security, Security::Secure);
    let none = resolver
        .tlsa("_2525._tcp.mx.dane.test")
        .await
        .expect("no TLSA");
    assert!(none.value.is_empty());
    assert_eq!(none.security, Security::Secure, "{}", unbound.log());
    let plain = resolver.mx(&domain("plain.test")).await.expect("MX");
    assert_eq!(plain.security, Security::Insecure);
    match resolver.mx(&domain("broken.test")).await {
        Err(DnsError::Bogus { reason, .. }) => {
            assert!(reason.contains("extended DNS error"), "{reason}")
        }
        other => panic!("expected Bogus, got {other:?}"),
    }
}

/// RFC 8914 section 4.7: SERVFAIL with extended error 6 from the trusted resolver is bogus
/// data, named so in the error; a plain SERVFAIL stays a temporary failure.
#[tokio::test]
async fn resolver_mode_servfail_with_ede_6_is_bogus() {
    let dns = TestDns::start().await;
    dns.servfail_with_ede("bogus.example", 6, "signature over MX does not verify");
    dns.servfail("down.example");
    let resolver =
        HickoryResolver::with_dnssec(&[dns.addr], TIMEOUT, DnssecMode::Resolver, None).unwrap();
    match resolver.mx(&domain("bogus.example")).await {
        Err(DnsError::Bogus { reason, .. }) => {
            assert!(reason.contains("6 (DNSSEC Bogus)"), "{reason}");
            assert!(reason.contains("signature over MX"), "{reason}");
        }
        other => panic!("expected Bogus, got {other:?}"),
    }
    assert!(matches!(
        resolver.mx(&domain("down.example")).await,
        Err(DnsError::Temporary { .. })
    ));
}

// ---- configuration (D5 defaults and refusals) ----

const CONFIG: &str = r#"
[server]
data_dir = "/var/lib/tlsgate"
[[listener]]
bind = "127.0.0.1:2525"
role = "inbound"
[inbound]
local_domains = ["example.no"]
"#;

fn config(dns: &str) -> Result<tlsgate::config::Config, tlsgate::config::ConfigError> {
    tlsgate::config::Config::from_toml(&format!("{CONFIG}\n[dns]\n{dns}\n"), "/etc/t.toml")
}

fn refused_key(dns: &str) -> (String, String) {
    match config(dns) {
        Err(tlsgate::config::ConfigError::Invalid { key, reason, .. }) => (key, reason),
        other => panic!("expected a refusal of {dns:?}, got {other:?}"),
    }
}

/// D5 defaults: `validate` with the system resolver, `resolver` when every nameserver is on
/// loopback (a local unbound), `off` with a warning for a resolver across the network.
#[test]
fn dnssec_defaults_follow_the_nameservers() {
    let system = config("").unwrap();
    assert_eq!(system.dns.dnssec, DnssecMode::Validate);
    assert!(system.dns.trust_anchor.is_none());
    assert!(system.dns.dnssec_warning().is_none());
    let local = config(r#"nameservers = ["127.0.0.1:53", "[::1]:53"]"#).unwrap();
    assert_eq!(local.dns.dnssec, DnssecMode::Resolver);
    let far = config(r#"nameservers = ["192.0.2.53:53"]"#).unwrap();
    assert_eq!(far.dns.dnssec, DnssecMode::Off);
    let warning = far.dns.dnssec_warning().expect("a warning");
    assert!(warning.contains("DANE is unavailable"), "{warning}");
    // Written explicitly, off is no surprise: no warning.
    let off = config("nameservers = [\"192.0.2.53:53\"]\ndnssec = \"off\"").unwrap();
    assert!(off.dns.dnssec_warning().is_none());
    let summary = tlsgate::config::summary(&far, None);
    assert!(summary.contains("dnssec:            off"), "{summary}");
}

/// RFC 6840 section 5.7: the AD bit is only as good as the path to the resolver, so
/// `resolver` with a nameserver off loopback (or the system resolver) is a configuration error
/// naming `dns.dnssec`.
#[test]
fn resolver_mode_with_a_non_loopback_nameserver_is_refused() {
    let (key, reason) =
        refused_key("nameservers = [\"127.0.0.1:53\", \"192.0.2.53:53\"]\ndnssec = \"resolver\"");
    assert_eq!(key, "dns.dnssec");
    assert!(reason.contains("192.0.2.53:53"), "{reason}");
    let (key, _) = refused_key("dnssec = \"resolver\"");
    assert_eq!(key, "dns.dnssec");
    let (key, reason) = refused_key("dnssec = \"maybe\"");
    assert_eq!(key, "dns.dnssec");
    assert!(reason.contains("maybe"), "{reason}");
}

/// `dns.trust_anchor`: the root's DNSKEY in zone-file form, with an optional DS that must
/// match it (RFC 4034 section 5.1.4); a mismatch or an unreadable file is refused at load.
#[tokio::test]
async fn trust_anchor_file_is_checked_at_load() {
    let pki = SignedDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let with_ds = dir.path().join("with-ds.key");
    std::fs::write(
        &with_ds,
        format!("{}{}", pki.trust_anchor_text(), pki.trust_anchor_ds()),
    )
    .unwrap();
    let ok = config(&format!(
        "dnssec = \"validate\"\ntrust_anchor = \"{}\"",
        with_ds.display()
    ))
    .unwrap();
    assert_eq!(ok.dns.trust_anchor.as_deref(), Some(with_ds.as_path()));

    let wrong = dir.path().join("wrong.key");
    let other = SignedDns::start().await;
    std::fs::write(
        &wrong,
        format!("{}{}", pki.trust_anchor_text(), other.trust_anchor_ds()),
    )
    .unwrap();
    let (key, reason) = refused_key(&format!("trust_anchor = \"{}\"", wrong.display()));
    assert_eq!(key, "dns.trust_anchor");
    assert!(reason.contains("matches none"), "{reason}");
    let (key, _) = refused_key("trust_anchor = \"/nonexistent/root.key\"");
    assert_eq!(key, "dns.trust_anchor");
}

// ---- through the relay ----

/// D5 and RFC 4035 section 5.5: a bogus MX RRset of a signed destination is a temporary
/// failure of that destination (4.7.5, the reason says "DNSSEC bogus"), never a silent fall
/// back to unvalidated data: the MX host is not even contacted.
#[tokio::test]
async fn a_bogus_mx_defers_with_4_7_5() {
    use common::relay::{ip, setup_dnssec, MX1};
    let pki = SignedDns::start().await;
    pki.zone("partner.test", Signed::Yes)
        .add_mx("partner.test", 10, "mx1.partner.test")
        .add_ip("mx1.partner.test", ip(MX1));
    pki.corrupt_signature("partner.test", RecordType::MX);
    let s = setup_dnssec(
        (*pki).clone(),
        &format!(
            "dnssec = \"validate\"\ntrust_anchor = \"{}\"",
            pki.trust_anchor_file().display()
        ),
        "retry_schedule = [\"1h\"]",
        "[metrics]\nbind = \"127.0.0.1:0\"",
    )
    .await;
    let sink = s.sink(MX1, common::mx_sink::Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "bogus MX")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"), "{state:?}");
    let reply = state.last_reply.clone().unwrap_or_default();
    assert!(reply.contains("DNSSEC bogus"), "{reply}");
    assert_eq!(sink.connections(), 0, "the bogus MX host was contacted");
    let metrics = s.relay.running().metrics_addr().expect("metrics bound");
    let body = scrape(metrics).await;
    assert!(
        body.contains("tlsgate_tls_failures_total{reason=\"dnssec_bogus\"} 1"),
        "{body}"
    );
}

/// D5: with a DNSSEC-stripping resolver path the relay does not defer mail to signed domains:
/// the self-check reports DNSSEC unavailable (`tlsgate_dnssec_available{mode="validate"} 0`)
/// and the MX answer is used as insecure.
#[tokio::test]
async fn a_stripping_resolver_is_reported_and_mail_still_flows() {
    use common::relay::{ip, setup_dnssec, MX1};
    let pki = SignedDns::start().await;
    pki.zone("partner.test", Signed::Yes)
        .add_mx("partner.test", 10, "mx1.partner.test")
        .add_ip("mx1.partner.test", ip(MX1));
    pki.strip_dnssec(true);
    let s = setup_dnssec(
        (*pki).clone(),
        &format!(
            "dnssec = \"validate\"\ntrust_anchor = \"{}\"",
            pki.trust_anchor_file().display()
        ),
        "",
        "[metrics]\nbind = \"127.0.0.1:0\"",
    )
    .await;
    let metrics = s.relay.running().metrics_addr().expect("metrics bound");
    let deadline = tokio::time::Instant::now() + common::STEP;
    loop {
        let body = scrape(metrics).await;
        if body.contains("tlsgate_dnssec_available{mode=\"validate\"} 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the self-check never reported DNSSEC unavailable:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sink = s.sink(MX1, common::mx_sink::Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "stripped")
        .await;
    s.wait_queue_empty().await;
    assert_eq!(sink.messages().len(), 1);
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::STEP, stream.read_to_end(&mut response))
        .await
        .expect("metrics in time")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// Waits until the first recipient of the only queued message is deferred.
async fn wait_for_deferral(s: &common::relay::Setup) -> tlsgate::queue::RecipientState {
    let deadline = tokio::time::Instant::now() + common::STEP;
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

/// D5: `tlsgate probe` runs the self-check first and says whether DANE is available; with a
/// stripping resolver path it says UNAVAILABLE and why, and still probes (insecure answers).
#[tokio::test]
async fn probe_reports_the_dnssec_self_check() {
    let pki = hierarchy().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let text = common::base_config(dir.path(), &cert, &key, "").replace(
        "nameservers = [\"127.0.0.1:9\"]",
        &format!(
            "nameservers = [\"{}\"]\ndnssec = \"validate\"\ntrust_anchor = \"{}\"",
            pki.addr,
            pki.trust_anchor_file().display()
        ),
    );
    assert!(
        text.contains("dnssec = \"validate\""),
        "base config changed"
    );
    let config = dir.path().join("tlsgate.toml");
    std::fs::write(&config, text).unwrap();
    let probe = || async {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
                .args(["probe", "dane.test", "--timeout", "2s", "--config"])
                .arg(&config)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("probe finished in time")
        .expect("probe ran");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = probe().await;
    assert!(stdout.contains("dnssec: validate, available"), "{stdout}");
    pki.strip_dnssec(true);
    let stdout = probe().await;
    assert!(
        stdout.contains("dnssec: validate, UNAVAILABLE, DANE is off"),
        "{stdout}"
    );
    // check-config runs the same self-check against the configured resolvers (D5).
    let check = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .args(["check-config", "--config"])
            .arg(&config)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("check-config finished in time")
    .expect("check-config ran");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: dnssec: validate, UNAVAILABLE, DANE is off"),
        "{stdout}"
    );
}

/// A `dane-only` entry can never be met with DNSSEC off: said at start and by check-config,
/// so that nobody learns it from a bounce five days later.
#[test]
fn dane_only_with_dnssec_off_is_warned_about() {
    let off = tlsgate::config::Config::from_toml(
        &format!(
            "{CONFIG}\n[[policy]]\ndomain = \"bank.test\"\ntls = \"dane-only\"\n[dns]\nnameservers = [\"127.0.0.1:53\"]\ndnssec = \"off\"\n"
        ),
        "/etc/t.toml",
    )
    .unwrap();
    let warnings = off.dnssec_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("[[policy]] bank.test is \"dane-only\" but dns.dnssec is \"off\""),
        "{warnings:?}"
    );
    assert!(tlsgate::config::summary(&off, None).contains("waits in the queue until it expires"));
    let on = tlsgate::config::Config::from_toml(
        &format!(
            "{CONFIG}\n[[policy]]\ndomain = \"bank.test\"\ntls = \"dane-only\"\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n"
        ),
        "/etc/t.toml",
    )
    .unwrap();
    assert!(on.dnssec_warnings().is_empty());
}
