//! Inbound sender authentication (issue 5) against zones served by the in-process test DNS:
//! DKIM signatures made here with mail-auth (Ed25519 generated per test, RSA-SHA256 from a
//! fixture), SPF records with ip4 / include / redirect, DMARC policies, and the action the
//! default [`AuthPolicy`] takes. Only 127.0.0.1 is ever contacted.

mod common;

use common::base64;
use common::dns::TestDns;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tlsgate::auth::{
    strip_our_authentication_results, AuthAction, AuthOutcome, AuthPolicy, AuthResult, CheckInput,
    DkimAlgorithm, DmarcPolicy, OutboundSigner, PolicyAction, SpfIdentity, Verifier,
};

const ID: &str = "mx.tlsgate.test";
/// A documentation address: only data for SPF, never contacted.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

/// RSA-2048 test key (PKCS#8), made with `openssl genpkey` for this test only.
const RSA_KEY_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDLZ8iIY63QJlF7
MsEwIVXIxpbw3nCC2K5To223mJkc1Q/ILsl1IDnlGE4kBbUJjfjHbS5dNBlm3mDn
g3osQ3FrgiNKI6NVo/mDopG1ee3A2zpICvE8Js9At6IqCXeU8+zeK7fdHAdvkF0r
gswzxi1iCEEq3ZmiwKbWUSDGhyKGAeQp2OEyvUHLj1Kgc92aKsomSjYAAnSQgEVF
5mqY/GOw1KVBvo+WlnIvPM7zj/MhwH7OrZfrOKQ2rRBE/NtaCvigl95YQN3Od2fV
dBnKXaHVEgSul29cI4ZNl7+kBvgxARb8t6d5Vps3pNpDx9zwLQD9u9BOkN+32QDe
DpLuG8upAgMBAAECggEABdrEidscoKDJuEW7YRrvMNU5I6ZeD1YUm8cDccUMUH54
HXyYmIIcndHM8KUoEyX+oswrXna7wxs5fNBq+XqDeY2zCFTtmZnGT8Sjya5rFSGk
6XfvKO+7sr2BBxFjW2qInH3I+q3uL4bfN6Zkdu+y/18EySq8W6k3OXSiVd8uiN7Y
lC+k3FvvZ7Fl2fARSBYYW6loCq6nWE42UuSUkSu7b8Tc4sWcKmRhxwHaEpxmmfTk
oIZ65fqQfgQAGbcJkDUQR/t/kr91q+06yyOG4Eqrtkc78szafrYKryM2h4A6ZZJc
/44/0H3R7ccsmYlscwJHse6oNjKMBnR+fSofw0TEEQKBgQDwDqNNSn/6W+dxEHOW
H2d/D/q1ch785/UlefL87C6F+bp3yuT9w5uENFClTmI7e3AoU3FozBTz645QDGZe
tEGj1Gms4RzS4rqRA74bTDdHTvy7is4BYWhDaqioKg3jRK8Qxbh7c6TrYnGjQExO
b9ejDmrwLLrEprk50mL/XLkb3QKBgQDY6gF1JSgvX/ws7Zvd9uOfiJzmGc4FZL8+
OjVG/D8Dd0bIlqzWijV9SRkpzwEhJAHoLi5IqfTNwUJh5NWOQdELu4SFkvUel5BR
aJSPuvcrkvAdY+peKPtmX6sN4TFqoWTmySBH7IBGh2CVDoR4aW9Idp6HcNqk/wyP
IgZg2TJIPQKBgDpwNczRAAqgaN0bVigLiRRjfXLCT0zd4s22vDJaBJFU09HpsIke
HzO10JQNWtiEGi+W8JrEY61lgIV4H0uasggB45/URUIJM8WtlY/ro+FWFyxIhBHN
9qXCxz/4zNywkbWRjHFxG4q5slQ9iNXnYCUvk1TYbrcEpz6uOq9TkTR5AoGANP4+
ausv/Rr7FdLa8IhfpdsPUdveDE1Ht6Eq4PPBRUx/m4PMKAHN/ZS9NAyhnwIYASw/
HHuBFj9vw1DPp5iGxNIEF0oG3nlyxaDCIrcvqZKVXOjLGkPy31jiBlsM4psZdpSO
cWPjFtf+DYxlarF/gXmRU0+L6yFwZQuP+Vs2wJUCgYEAqiyGZV/EjymuQli7ExvL
k6KKcwmrx1jixzsuxCgEm2XEX+p296dMvCpGWeWxu0UMSRmiHxUyCcaDy9143gZQ
YIuIa4GIM5hwQxyixY1tzfR6r7zH42bYb0Lr1V6GeS4GVkI1lLnxzIyPOi3oQJXe
UYK8dcZv6yej0PUOYNJ9xmA=
-----END PRIVATE KEY-----";
/// Its SubjectPublicKeyInfo, base64 (the DKIM `p=` value).
const RSA_PUBLIC_B64: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAy2fIiGOt0CZRezLBMCFVyMaW8N5wgtiuU6Ntt5iZHNUPyC7JdSA55RhOJAW1CY34x20uXTQZZt5g54N6LENxa4IjSiOjVaP5g6KRtXntwNs6SArxPCbPQLeiKgl3lPPs3iu33RwHb5BdK4LMM8YtYghBKt2ZosCm1lEgxocihgHkKdjhMr1By49SoHPdmirKJko2AAJ0kIBFReZqmPxjsNSlQb6PlpZyLzzO84/zIcB+zq2X6zikNq0QRPzbWgr4oJfeWEDdzndn1XQZyl2h1RIErpdvXCOGTZe/pAb4MQEW/LeneVabN6TaQ8fc8C0A/bvQTpDft9kA3g6S7hvLqQIDAQAB";

/// A bare mail-auth authenticator on one nameserver (for the intermediary in the ARC test,
/// and for a resolver with its own, long, timeout).
fn authenticator(addr: SocketAddr, query_timeout: Duration) -> MessageAuthenticator {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for conn in &mut ns.connections {
        conn.port = addr.port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    builder.options_mut().timeout = query_timeout;
    MessageAuthenticator(builder.build().unwrap())
}

fn verifier(dns: &TestDns, policy: AuthPolicy) -> Verifier {
    Verifier::new(&[dns.addr], ID, Duration::from_secs(10), policy).unwrap()
}

fn message(from: &str) -> String {
    format!(
        "From: Alice <{from}>\r\n\
         To: <bob@example.no>\r\n\
         Subject: quarterly report\r\n\
         Date: Mon, 23 Nov 2026 08:00:00 +0000\r\n\
         Message-ID: <1@example.org>\r\n\
         \r\n\
         Hello Bob.\r\n\
         The numbers are attached.\r\n"
    )
}

/// An Ed25519 key generated now, published as `selector._domainkey.domain`.
fn ed25519_key(dns: &TestDns, domain: &str, selector: &str) -> Ed25519Key {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    dns.add_txt(
        &format!("{selector}._domainkey.{domain}"),
        &format!("v=DKIM1; k=ed25519; p={}", base64(&key.public_key())),
    );
    key
}

fn rsa_key() -> RsaKey<Sha256> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(RSA_KEY_PEM.as_bytes()).unwrap();
    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der)).unwrap()
}

fn publish_rsa(dns: &TestDns, domain: &str, selector: &str) {
    dns.add_txt(
        &format!("{selector}._domainkey.{domain}"),
        &format!("v=DKIM1; k=rsa; p={RSA_PUBLIC_B64}"),
    );
}

const SIGNED_HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

fn sign_ed25519(key: Ed25519Key, domain: &str, selector: &str, message: &str) -> String {
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .sign(message.as_bytes())
        .unwrap();
    format!("{}{message}", sig.to_header())
}

fn sign_rsa(domain: &str, selector: &str, message: &str) -> String {
    let sig = DkimSigner::from_key(rsa_key())
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .sign(message.as_bytes())
        .unwrap();
    format!("{}{message}", sig.to_header())
}

async fn check(v: &Verifier, ip: IpAddr, mail_from: Option<&str>, message: &str) -> AuthOutcome {
    let fut = v.check(CheckInput {
        client_ip: ip,
        helo: "mail.example.org",
        mail_from,
        message: message.as_bytes(),
    });
    tokio::time::timeout(common::STEP, fut)
        .await
        .expect("check hung")
}

// ---------------------------------------------------------------- DKIM

#[tokio::test]
async fn dkim_ed25519_pass() {
    let dns = TestDns::start().await;
    let key = ed25519_key(&dns, "example.org", "ed");
    let signed = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(out.dkim.len(), 1, "{out:#?}");
    let d = &out.dkim[0];
    assert_eq!(d.result, AuthResult::Pass, "{out:#?}");
    assert_eq!(d.domain.as_deref(), Some("example.org"));
    assert_eq!(d.selector.as_deref(), Some("ed"));
    assert_eq!(d.b_prefix.as_ref().map(String::len), Some(8));
    assert!(
        out.header
            .contains("\tdkim=pass header.d=example.org header.s=ed header.b="),
        "{}",
        out.header
    );
    assert!(!out.timed_out);
}

#[tokio::test]
async fn dkim_rsa_sha256_pass() {
    let dns = TestDns::start().await;
    publish_rsa(&dns, "example.org", "rsa");
    let signed = sign_rsa("example.org", "rsa", &message("alice@example.org"));
    assert!(signed.contains("a=rsa-sha256"), "{signed}");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(out.dkim.len(), 1, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::Pass, "{out:#?}");
}

#[tokio::test]
async fn dkim_body_tampered_fails() {
    let dns = TestDns::start().await;
    let key = ed25519_key(&dns, "example.org", "ed");
    let signed = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let tampered = signed.replace("The numbers are attached.", "Pay invoice 42 today.");
    assert_ne!(signed, tampered);
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &tampered).await;
    assert_eq!(out.dkim.len(), 1, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::Fail, "{out:#?}");
    let reason = out.dkim[0].reason.as_deref().unwrap_or("");
    assert!(reason.contains("body hash"), "{reason}");
    assert!(out.header.contains("\tdkim=fail ("), "{}", out.header);
}

#[tokio::test]
async fn dkim_header_tampered_fails() {
    let dns = TestDns::start().await;
    publish_rsa(&dns, "example.org", "rsa");
    let signed = sign_rsa("example.org", "rsa", &message("alice@example.org"));
    let tampered = signed.replace("Subject: quarterly report", "Subject: urgent wire transfer");
    assert_ne!(signed, tampered);
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &tampered).await;
    assert_eq!(out.dkim.len(), 1, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::Fail, "{out:#?}");
}

#[tokio::test]
async fn dkim_key_missing_is_permerror() {
    let dns = TestDns::start().await;
    // Signed with a key that is not published anywhere.
    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let signed = sign_ed25519(key, "example.org", "gone", &message("alice@example.org"));
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(out.dkim.len(), 1, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::PermError, "{out:#?}");
    assert_eq!(out.dkim[0].selector.as_deref(), Some("gone"));
    assert!(out.header.contains("dkim=permerror"), "{}", out.header);
}

#[tokio::test]
async fn dkim_each_signature_has_its_result() {
    let dns = TestDns::start().await;
    publish_rsa(&dns, "example.org", "rsa");
    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let once = sign_rsa("example.org", "rsa", &message("alice@example.org"));
    let twice = sign_ed25519(key, "relay.example", "nokey", &once);
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("alice@example.org"), &twice).await;
    assert_eq!(out.dkim.len(), 2, "{out:#?}");
    let by_domain = |d: &str| out.dkim.iter().find(|c| c.domain.as_deref() == Some(d));
    assert_eq!(by_domain("example.org").unwrap().result, AuthResult::Pass);
    assert_eq!(
        by_domain("relay.example").unwrap().result,
        AuthResult::PermError
    );
    assert_eq!(out.header.matches("dkim=").count(), 2, "{}", out.header);
}

#[tokio::test]
async fn unsigned_message_is_dkim_none() {
    let dns = TestDns::start().await;
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(
        &v,
        CLIENT,
        Some("alice@example.org"),
        &message("alice@example.org"),
    )
    .await;
    assert!(out.dkim.is_empty());
    assert!(out.header.contains("\tdkim=none"), "{}", out.header);
    assert!(out.arc.is_none());
}

// ---------------------------------------------------------------- SPF

async fn spf(records: &[(&str, &str)], ip: IpAddr, sender: &str) -> AuthOutcome {
    let dns = TestDns::start().await;
    for (name, value) in records {
        dns.add_txt(name, value);
    }
    let v = verifier(&dns, AuthPolicy::default());
    let from = sender.to_string();
    check(&v, ip, Some(sender), &message(&from)).await
}

#[tokio::test]
async fn spf_ip4_pass_and_fail() {
    let records = [("example.org", "v=spf1 ip4:192.0.2.0/24 -all")];
    let out = spf(&records, CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    assert_eq!(out.spf.domain, "example.org");
    assert_eq!(
        out.spf.identity,
        SpfIdentity::MailFrom("alice@example.org".into())
    );
    assert!(
        out.header
            .contains("\tspf=pass smtp.mailfrom=alice@example.org;"),
        "{}",
        out.header
    );

    let out = spf(&records, OTHER_CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::Fail, "{out:#?}");
    // No DMARC record: the SPF-only rule applies, by default a tag.
    assert_eq!(
        out.action,
        AuthAction::Tag {
            header: "X-Tlsgate-Quarantine: spf=fail\r\n".into()
        }
    );
}

#[tokio::test]
async fn spf_softfail() {
    let records = [("example.org", "v=spf1 ip4:192.0.2.0/24 ~all")];
    let out = spf(&records, OTHER_CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::SoftFail, "{out:#?}");
    assert_eq!(out.action, AuthAction::Accept);
    assert!(out.header.contains("spf=softfail"), "{}", out.header);
}

#[tokio::test]
async fn spf_include() {
    let records = [
        ("example.org", "v=spf1 include:_spf.provider.test -all"),
        ("_spf.provider.test", "v=spf1 ip4:192.0.2.10 -all"),
    ];
    let out = spf(&records, CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    let out = spf(&records, OTHER_CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::Fail, "{out:#?}");
}

#[tokio::test]
async fn spf_redirect() {
    let records = [
        ("example.org", "v=spf1 redirect=_spf.provider.test"),
        ("_spf.provider.test", "v=spf1 ip4:192.0.2.0/28 ~all"),
    ];
    let out = spf(&records, CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    let out = spf(&records, OTHER_CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::SoftFail, "{out:#?}");
}

#[tokio::test]
async fn spf_no_record_is_none() {
    let out = spf(&[], CLIENT, "alice@example.org").await;
    assert_eq!(out.spf.result, AuthResult::None, "{out:#?}");
    assert_eq!(out.action, AuthAction::Accept);
}

#[tokio::test]
async fn spf_null_sender_checks_helo() {
    let dns = TestDns::start().await;
    dns.add_txt("mail.example.org", "v=spf1 ip4:192.0.2.10 -all");
    let v = verifier(&dns, AuthPolicy::default());
    for sender in [None, Some("")] {
        let out = check(&v, CLIENT, sender, &message("mailer-daemon@example.org")).await;
        assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
        assert_eq!(
            out.spf.identity,
            SpfIdentity::Helo("mail.example.org".into())
        );
        assert!(
            out.header.contains("smtp.helo=mail.example.org"),
            "{}",
            out.header
        );
    }
}

#[tokio::test]
async fn spf_fail_without_dmarc_can_reject() {
    let dns = TestDns::start().await;
    dns.add_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    let policy = AuthPolicy {
        spf_fail_without_dmarc: PolicyAction::Reject,
        ..AuthPolicy::default()
    };
    let v = verifier(&dns, policy);
    let out = check(
        &v,
        OTHER_CLIENT,
        Some("a@example.org"),
        &message("a@example.org"),
    )
    .await;
    match &out.action {
        AuthAction::Reject {
            code: 550,
            enhanced,
            ..
        } => assert!(enhanced.starts_with("5.7.")),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- DMARC

const SPF_ORG: (&str, &str) = ("example.org", "v=spf1 ip4:192.0.2.0/24 -all");

#[tokio::test]
async fn dmarc_pass_via_spf_alignment() {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(
        &v,
        CLIENT,
        Some("alice@example.org"),
        &message("alice@example.org"),
    )
    .await;
    assert_eq!(out.dmarc.result, AuthResult::Pass, "{out:#?}");
    assert!(out.dmarc.spf_aligned);
    assert!(!out.dmarc.dkim_aligned);
    assert_eq!(out.dmarc.policy, Some(DmarcPolicy::Reject));
    assert_eq!(out.action, AuthAction::Accept);
    assert!(
        out.header
            .ends_with("\tdmarc=pass header.from=example.org policy.dmarc=reject\r\n"),
        "{}",
        out.header
    );
}

#[tokio::test]
async fn dmarc_pass_via_dkim_alignment() {
    let dns = TestDns::start().await;
    // The envelope is another domain whose SPF fails; only the DKIM signature aligns.
    dns.add_txt("bounces.example", "v=spf1 -all");
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let key = ed25519_key(&dns, "example.org", "ed");
    let signed = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("x@bounces.example"), &signed).await;
    assert_eq!(out.spf.result, AuthResult::Fail, "{out:#?}");
    assert_eq!(out.dmarc.result, AuthResult::Pass, "{out:#?}");
    assert!(out.dmarc.dkim_aligned);
    assert!(!out.dmarc.spf_aligned);
    // DMARC passed: the SPF failure of a foreign envelope does not matter.
    assert_eq!(out.action, AuthAction::Accept);
}

async fn dmarc_failing(dmarc: &str) -> AuthOutcome {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.add_txt("_dmarc.example.org", dmarc);
    // Signed by a third party: DKIM passes but does not align.
    let key = ed25519_key(&dns, "thirdparty.example", "s1");
    let signed = sign_ed25519(key, "thirdparty.example", "s1", &message("ceo@example.org"));
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, OTHER_CLIENT, Some("ceo@example.org"), &signed).await;
    assert_eq!(out.spf.result, AuthResult::Fail, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::Pass, "{out:#?}");
    assert_eq!(out.dmarc.result, AuthResult::Fail, "{out:#?}");
    assert!(out.header.contains("\tdmarc=fail"), "{}", out.header);
    out
}

#[tokio::test]
async fn dmarc_fail_reject_is_550() {
    let out = dmarc_failing("v=DMARC1; p=reject").await;
    assert_eq!(out.dmarc.policy, Some(DmarcPolicy::Reject));
    match &out.action {
        AuthAction::Reject {
            code,
            enhanced,
            text,
        } => {
            assert_eq!((*code, *enhanced), (550, "5.7.1"));
            assert!(
                text.contains("DMARC") && text.contains("example.org"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(out.header.contains("policy.dmarc=reject"), "{}", out.header);
}

#[tokio::test]
async fn dmarc_fail_quarantine_is_tagged() {
    let out = dmarc_failing("v=DMARC1; p=quarantine").await;
    assert_eq!(out.dmarc.policy, Some(DmarcPolicy::Quarantine));
    assert_eq!(
        out.action,
        AuthAction::Tag {
            header: "X-Tlsgate-Quarantine: dmarc=fail\r\n".into()
        }
    );
}

#[tokio::test]
async fn dmarc_fail_none_is_accepted() {
    let out = dmarc_failing("v=DMARC1; p=none").await;
    assert_eq!(out.dmarc.policy, Some(DmarcPolicy::None));
    assert_eq!(out.action, AuthAction::Accept);
}

#[tokio::test]
async fn dmarc_testing_mode_lowers_reject_to_quarantine() {
    let out = dmarc_failing("v=DMARC1; p=reject; t=y").await;
    assert_eq!(out.dmarc.policy, Some(DmarcPolicy::Quarantine));
    assert!(matches!(out.action, AuthAction::Tag { .. }), "{out:#?}");
}

#[tokio::test]
async fn dmarc_actions_are_configurable() {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let policy = AuthPolicy {
        dmarc_reject: PolicyAction::Tag,
        tag_header: "X-Spam-Flag".into(),
        ..AuthPolicy::default()
    };
    let v = verifier(&dns, policy);
    let out = check(
        &v,
        OTHER_CLIENT,
        Some("a@example.org"),
        &message("a@example.org"),
    )
    .await;
    assert_eq!(out.dmarc.result, AuthResult::Fail, "{out:#?}");
    assert_eq!(
        out.action,
        AuthAction::Tag {
            header: "X-Spam-Flag: dmarc=fail\r\n".into()
        }
    );
}

// ---------------------------------------------------------------- temporary errors

#[tokio::test]
async fn dmarc_record_temperror_tempfails_where_reject_is_possible() {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.servfail("_dmarc.example.org");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(
        &v,
        OTHER_CLIENT,
        Some("a@example.org"),
        &message("a@example.org"),
    )
    .await;
    assert_eq!(out.dmarc.result, AuthResult::TempError, "{out:#?}");
    match &out.action {
        AuthAction::TempFail {
            code: 451,
            enhanced,
            ..
        } => {
            assert!(enhanced.starts_with("4.7."), "{enhanced}")
        }
        other => panic!("{other:?}"),
    }

    // When even p=reject would only be tagged, nothing is worth a retry.
    let policy = AuthPolicy {
        dmarc_reject: PolicyAction::Tag,
        ..AuthPolicy::default()
    };
    let v = verifier(&dns, policy);
    let out = check(
        &v,
        OTHER_CLIENT,
        Some("a@example.org"),
        &message("a@example.org"),
    )
    .await;
    assert_eq!(out.dmarc.result, AuthResult::TempError, "{out:#?}");
    assert_eq!(out.action, AuthAction::Accept);
    assert!(out.header.contains("dmarc=temperror"), "{}", out.header);
}

#[tokio::test]
async fn spf_temperror_is_recorded_and_accepted_by_default() {
    let dns = TestDns::start().await;
    dns.servfail("example.org");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, CLIENT, Some("a@example.org"), &message("a@example.net")).await;
    assert_eq!(out.spf.result, AuthResult::TempError, "{out:#?}");
    assert_eq!(out.action, AuthAction::Accept);
    assert!(out.header.contains("spf=temperror"), "{}", out.header);

    let policy = AuthPolicy {
        spf_fail_without_dmarc: PolicyAction::Reject,
        ..AuthPolicy::default()
    };
    let v = verifier(&dns, policy);
    let out = check(&v, CLIENT, Some("a@example.org"), &message("a@example.net")).await;
    assert!(
        matches!(out.action, AuthAction::TempFail { code: 451, .. }),
        "{out:#?}"
    );
}

/// A nameserver that never answers (UDP datagrams are swallowed, TCP connections accepted
/// and left silent): the check still returns by its deadline, every result temperror.
#[tokio::test]
async fn silent_dns_cannot_hold_the_check() {
    let (udp, tcp) = common::dns::bind_udp_and_tcp().await;
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                r = udp.recv_from(&mut buf) => { if r.is_err() { return; } }
                r = tcp.accept() => match r { Ok((s, _)) => held.push(s), Err(_) => return },
            }
        }
    });

    // A resolver that would wait far longer than the check's deadline by itself.
    let auth = authenticator(addr, Duration::from_secs(30));
    let v =
        Verifier::from_authenticator(auth, ID, Duration::from_millis(700), AuthPolicy::default());

    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let signed = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let started = Instant::now();
    let out = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(out.timed_out, "{out:#?}");
    assert_eq!(out.spf.result, AuthResult::TempError);
    assert_eq!(out.dkim.len(), 1);
    assert_eq!(out.dkim[0].result, AuthResult::TempError);
    assert_eq!(out.dmarc.result, AuthResult::TempError);
    // SPF's own per-query bound (a third of the 700 ms budget, issue 17 item 2) ends its
    // lookup before the check's deadline, and the comment names the lookup.
    assert!(
        out.header
            .contains("spf=temperror (DNS lookup of example.org failed: timeout)"),
        "{}",
        out.header
    );
    // The DMARC policy is unknown and might be reject: try again later.
    assert!(
        matches!(out.action, AuthAction::TempFail { code: 451, .. }),
        "{out:#?}"
    );

    // The same with the production constructor: its per-query timeout is derived from the
    // check's own, so hickory gives up in time as well.
    let v = Verifier::new(
        &[addr],
        ID,
        Duration::from_millis(700),
        AuthPolicy::default(),
    )
    .unwrap();
    let started = Instant::now();
    let out = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(out.spf.result, AuthResult::TempError, "{out:#?}");
}

// ---------------------------------------------------------------- header handling

#[tokio::test]
async fn stamp_replaces_forged_results_and_adds_tag() {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=quarantine");
    let v = verifier(&dns, AuthPolicy::default());
    let body = format!(
        "Authentication-Results: MX.tlsgate.test;\r\n\tdkim=pass header.d=example.org\r\n\
         Authentication-Results: upstream.example; spf=pass smtp.mailfrom=a@example.org\r\n{}",
        message("a@example.org")
    );
    let out = check(&v, OTHER_CLIENT, Some("a@example.org"), &body).await;
    assert!(matches!(out.action, AuthAction::Tag { .. }), "{out:#?}");
    let stamped = String::from_utf8(v.stamp(body.as_bytes(), &out)).unwrap();
    assert!(stamped.starts_with(&out.header), "{stamped}");
    assert!(stamped[out.header.len()..].starts_with("X-Tlsgate-Quarantine: dmarc=fail\r\n"));
    assert_eq!(
        stamped.matches("Authentication-Results:").count(),
        2,
        "{stamped}"
    );
    assert!(stamped.contains("Authentication-Results: upstream.example;"));
    assert!(!stamped.contains("MX.tlsgate.test"));
    assert!(stamped.ends_with("The numbers are attached.\r\n"));

    // The stamped message parses, and our header carries every method.
    let parsed = mail_parser::MessageParser::default()
        .parse(stamped.as_bytes())
        .unwrap();
    let ours = parsed
        .headers_raw()
        .find(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, value)| value)
        .expect("our header");
    assert!(ours.trim_start().starts_with("mx.tlsgate.test;"), "{ours}");
    for method in ["spf=fail", "dkim=none", "dmarc=fail"] {
        assert!(ours.contains(method), "{method} in {ours}");
    }
}

#[test]
fn strip_is_exported() {
    let m = b"Authentication-Results: mx.tlsgate.test; none\r\nA: b\r\n\r\nx";
    assert_eq!(strip_our_authentication_results(m, ID), b"A: b\r\n\r\nx");
}

#[test]
fn check_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let v = Verifier::new(
            &["127.0.0.1:9".parse().unwrap()],
            ID,
            Duration::from_secs(1),
            AuthPolicy::default(),
        )
        .unwrap();
        let m = message("a@example.org");
        assert_send(v.check(CheckInput {
            client_ip: CLIENT,
            helo: "h",
            mail_from: None,
            message: m.as_bytes(),
        }));
    });
}

// ---------------------------------------------------------------- caching

#[tokio::test]
async fn answers_are_cached_for_their_ttl() {
    let dns = TestDns::start().await;
    dns.add_txt(SPF_ORG.0, SPF_ORG.1);
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let key = ed25519_key(&dns, "example.org", "ed");
    let signed = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let v = verifier(&dns, AuthPolicy::default());
    let first = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(first.dkim[0].result, AuthResult::Pass, "{first:#?}");
    assert_eq!(first.dmarc.result, AuthResult::Pass, "{first:#?}");
    // The authority breaks; the records (TTL 60 s) are still served from the cache.
    for name in [
        "example.org",
        "ed._domainkey.example.org",
        "_dmarc.example.org",
    ] {
        dns.servfail(name);
    }
    let second = check(&v, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(second.spf, first.spf);
    assert_eq!(second.dkim, first.dkim);
    assert_eq!(second.dmarc, first.dmarc);
    // A fresh verifier (empty cache) sees the failure.
    let fresh = verifier(&dns, AuthPolicy::default());
    let third = check(&fresh, CLIENT, Some("alice@example.org"), &signed).await;
    assert_eq!(third.spf.result, AuthResult::TempError, "{third:#?}");
}

/// The relay builds one resolver at start and shares it (architecture issue: no second
/// resolver with a cache of its own): an address delivery looked up is in the cache sender
/// authentication reads. RFC 7208 5.3: the `a:` mechanism looks up the host's addresses.
#[tokio::test]
async fn the_shared_resolver_has_one_cache_for_delivery_and_sender_authentication() {
    use tlsgate::dns::{HickoryResolver, Resolver};
    let dns = TestDns::start().await;
    dns.add_txt("example.org", "v=spf1 a:mx.example.org -all");
    dns.add_ip("mx.example.org", CLIENT);
    let shared = HickoryResolver::new(&[dns.addr], tlsgate::dns::QUERY_TIMEOUT).unwrap();
    // Delivery's look-up fills the cache; then the authority for the host breaks.
    assert_eq!(
        shared.addresses("mx.example.org").await.unwrap().value.ips,
        vec![CLIENT]
    );
    dns.servfail("mx.example.org");
    let body = message("alice@example.org");

    let on_shared = Verifier::with_resolver(
        shared.tokio_resolver(),
        ID,
        Duration::from_secs(10),
        AuthPolicy::default(),
    );
    let out = check(&on_shared, CLIENT, Some("alice@example.org"), &body).await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    // A resolver of its own would not have the address: the authority answers SERVFAIL.
    let own = verifier(&dns, AuthPolicy::default());
    let out = check(&own, CLIENT, Some("alice@example.org"), &body).await;
    assert_eq!(out.spf.result, AuthResult::TempError, "{out:#?}");
}

// ---------------------------------------------------------------- ARC

/// A forwarder verifies the original DKIM signature, records it and seals an ARC set.
async fn arc_sealed(dns: &TestDns) -> String {
    let key = ed25519_key(dns, "example.org", "ed");
    let original = sign_ed25519(key, "example.org", "ed", &message("alice@example.org"));
    let forwarder = authenticator(dns.addr, Duration::from_secs(5));
    let parsed = AuthenticatedMessage::parse(original.as_bytes()).unwrap();
    let arc = forwarder.verify_arc(&parsed).await;
    let dkim = forwarder.verify_dkim(&parsed).await;
    assert!(arc.can_be_sealed());
    let results = AuthenticationResults::new("list.forwarder.example")
        .with_dkim_results(&dkim, "alice@example.org")
        .with_arc_result(&arc, CLIENT);
    let seal_key = ed25519_key(dns, "forwarder.example", "arc");
    let set = ArcSealer::from_key(seal_key)
        .domain("forwarder.example")
        .selector("arc")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &arc)
        .unwrap();
    format!("{}{original}", set.to_header())
}

#[tokio::test]
async fn arc_pass_when_sealed() {
    let dns = TestDns::start().await;
    let sealed = arc_sealed(&dns).await;
    assert!(sealed.starts_with("ARC-"), "{sealed}");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, OTHER_CLIENT, Some("list@forwarder.example"), &sealed).await;
    let arc = out.arc.as_ref().expect("ARC evaluated");
    assert_eq!(arc.result, AuthResult::Pass, "{out:#?}");
    assert!(out.header.contains("\tarc=pass;"), "{}", out.header);
}

#[tokio::test]
async fn arc_fail_when_body_changed_after_sealing() {
    let dns = TestDns::start().await;
    let sealed = arc_sealed(&dns).await;
    let tampered = sealed.replace("The numbers are attached.", "Changed after sealing.");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(&v, OTHER_CLIENT, Some("list@forwarder.example"), &tampered).await;
    let arc = out.arc.as_ref().expect("ARC evaluated");
    assert_eq!(arc.result, AuthResult::Fail, "{out:#?}");
    assert_eq!(out.dkim[0].result, AuthResult::Fail, "{out:#?}");
}

// ---------------------------------------------------------------- outbound signing

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[tokio::test]
async fn outbound_signatures_verify() {
    let dns = TestDns::start().await;
    // Ed25519: a PKCS#8 key generated now, its public half published.
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    dns.add_txt(
        "out-ed._domainkey.example.no",
        &format!("v=DKIM1; k=ed25519; p={}", base64(&public)),
    );
    let ed =
        OutboundSigner::from_pem("example.no", "out-ed", &pem("PRIVATE KEY", &pkcs8), &[]).unwrap();
    assert_eq!(ed.algorithm(), DkimAlgorithm::Ed25519Sha256);
    // RSA-SHA256 from a key file.
    publish_rsa(&dns, "example.no", "out-rsa");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dkim.pem");
    std::fs::write(&path, RSA_KEY_PEM).unwrap();
    let rsa = OutboundSigner::load("example.no", "out-rsa", &path, &[]).unwrap();
    assert_eq!(rsa.algorithm(), DkimAlgorithm::RsaSha256);

    let v = verifier(&dns, AuthPolicy::default());
    let plain = message("sender@example.no");
    let signed = rsa.sign(&ed.sign(plain.as_bytes()).unwrap()).unwrap();
    let signed = String::from_utf8(signed).unwrap();
    assert!(signed.ends_with(&plain));
    let out = check(&v, CLIENT, Some("sender@example.no"), &signed).await;
    assert_eq!(out.dkim.len(), 2, "{out:#?}");
    for d in &out.dkim {
        assert_eq!(d.result, AuthResult::Pass, "{out:#?}");
        assert_eq!(d.domain.as_deref(), Some("example.no"));
    }
    assert!(signed.contains("a=ed25519-sha256") && signed.contains("a=rsa-sha256"));
    assert!(signed.contains("c=relaxed/relaxed"), "{signed}");
}

#[test]
fn outbound_signer_rejects_bad_input() {
    assert!(OutboundSigner::from_pem("example.no", "s", "not a key", &[]).is_err());
    let only_subject = vec!["Subject".to_string()];
    assert!(OutboundSigner::from_pem("example.no", "s", RSA_KEY_PEM, &only_subject).is_err());
    let missing = std::path::Path::new("/nonexistent/dkim.pem");
    assert!(OutboundSigner::load("example.no", "s", missing, &[]).is_err());
}

#[tokio::test]
async fn address_literal_helo_with_null_sender_is_spf_none() {
    let dns = TestDns::start().await;
    let v = verifier(&dns, AuthPolicy::default());
    for helo in ["[192.0.2.10]", "192.0.2.10", ""] {
        let out = v
            .check(CheckInput {
                client_ip: CLIENT,
                helo,
                mail_from: None,
                message: message("mailer-daemon@example.org").as_bytes(),
            })
            .await;
        assert_eq!(out.spf.result, AuthResult::None, "{helo}: {out:#?}");
        assert_eq!(out.action, AuthAction::Accept);
        assert!(out
            .header
            .starts_with("Authentication-Results: mx.tlsgate.test;\r\n\tspf=none"));
    }
}

#[tokio::test]
async fn dmarc_relaxed_and_strict_spf_alignment() {
    let dns = TestDns::start().await;
    dns.add_txt("bounce.example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let v = verifier(&dns, AuthPolicy::default());
    // Relaxed (the default): an envelope in a subdomain of the From domain aligns.
    let out = check(
        &v,
        CLIENT,
        Some("b@bounce.example.org"),
        &message("a@example.org"),
    )
    .await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    assert_eq!(out.dmarc.result, AuthResult::Pass, "{out:#?}");
    assert!(out.dmarc.spf_aligned);

    let dns = TestDns::start().await;
    dns.add_txt("bounce.example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject; aspf=s");
    let v = verifier(&dns, AuthPolicy::default());
    let out = check(
        &v,
        CLIENT,
        Some("b@bounce.example.org"),
        &message("a@example.org"),
    )
    .await;
    assert_eq!(out.spf.result, AuthResult::Pass, "{out:#?}");
    assert_eq!(out.dmarc.result, AuthResult::Fail, "{out:#?}");
    match &out.action {
        AuthAction::Reject { text, .. } => assert!(text.contains("not aligned"), "{text}"),
        other => panic!("{other:?}"),
    }
}
