//! check_host() on zones held in memory, one rule of RFC 7208 per test.

use super::*;
use crate::auth::spf::dns::{LookupError, SpfLookup};
use std::collections::HashMap;
use std::sync::Mutex;

/// Zones in memory; names in `fail` answer with an error (a timeout); `queries` counts.
#[derive(Default)]
struct MemoryDns {
    txt: HashMap<String, Vec<String>>,
    a: HashMap<String, Vec<IpAddr>>,
    mx: HashMap<String, Vec<String>>,
    ptr: HashMap<IpAddr, Vec<String>>,
    fail: Vec<String>,
    queries: Mutex<u32>,
}

impl MemoryDns {
    fn txt(mut self, name: &str, value: &str) -> Self {
        self.txt.entry(name.into()).or_default().push(value.into());
        self
    }
    fn a(mut self, name: &str, ip: &str) -> Self {
        self.a
            .entry(name.into())
            .or_default()
            .push(ip.parse().unwrap());
        self
    }
    fn mx(mut self, name: &str, host: &str) -> Self {
        self.mx.entry(name.into()).or_default().push(host.into());
        self
    }
    fn ptr(mut self, ip: &str, name: &str) -> Self {
        self.ptr
            .entry(ip.parse().unwrap())
            .or_default()
            .push(name.into());
        self
    }
    fn failing(mut self, name: &str) -> Self {
        self.fail.push(name.into());
        self
    }
    fn answer<T: Clone + Send + 'static>(
        &self,
        name: &str,
        v: Option<&Vec<T>>,
    ) -> SpfLookup<'_, T> {
        *self.queries.lock().unwrap() += 1;
        let result = if self.fail.iter().any(|f| f == name) {
            Err(LookupError {
                name: name.into(),
                reason: "timeout".into(),
            })
        } else {
            Ok(v.cloned().unwrap_or_default())
        };
        Box::pin(async move { result })
    }
}

impl SpfDns for MemoryDns {
    fn txt<'a>(&'a self, name: &'a str) -> SpfLookup<'a, Vec<u8>> {
        let v = self
            .txt
            .get(name)
            .map(|v| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>());
        self.answer(name, v.as_ref())
    }
    fn addresses<'a>(&'a self, name: &'a str, v6: bool) -> SpfLookup<'a, IpAddr> {
        let v = self.a.get(name).map(|v| {
            v.iter()
                .copied()
                .filter(|a| a.is_ipv6() == v6)
                .collect::<Vec<_>>()
        });
        self.answer(name, v.as_ref())
    }
    fn mx<'a>(&'a self, name: &'a str) -> SpfLookup<'a, String> {
        self.answer(name, self.mx.get(name))
    }
    fn ptr<'a>(&'a self, ip: IpAddr) -> SpfLookup<'a, String> {
        self.answer("ptr", self.ptr.get(&ip))
    }
}

async fn run(dns: &MemoryDns, ip: &str, sender: &str) -> SpfVerdict {
    check_host(
        dns,
        SpfRequest {
            ip: ip.parse().unwrap(),
            helo: "mail.example.org",
            sender: Some(sender),
            receiver: "mx.tlsgate.test",
        },
    )
    .await
}

async fn result(dns: &MemoryDns, ip: &str) -> AuthResult {
    run(dns, ip, "alice@example.org").await.result
}

#[tokio::test]
async fn no_record_is_none_and_two_records_permerror() {
    // RFC 7208 4.5: no v=spf1 record → none; more than one → permerror.
    let dns = MemoryDns::default().txt("example.org", "google-site-verification=x");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::None);
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 -all")
        .txt("example.org", "v=spf1 +all");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn malformed_domain_is_none_without_lookup() {
    // RFC 7208 4.3: a label over 63 octets or an empty label → none, nothing asked.
    let dns = MemoryDns::default();
    let long = format!("a@{}.example.org", "x".repeat(64));
    assert_eq!(run(&dns, "192.0.2.1", &long).await.result, AuthResult::None);
    assert_eq!(
        run(&dns, "192.0.2.1", "a@x..example.org").await.result,
        AuthResult::None
    );
    assert_eq!(*dns.queries.lock().unwrap(), 0);
}

#[tokio::test]
async fn syntax_error_anywhere_is_permerror() {
    // RFC 7208 4.6: a syntax error anywhere, even after a matching mechanism.
    let dns = MemoryDns::default().txt("example.org", "v=spf1 +all ip4:1.2.3.4/33");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn address_families_do_not_mix() {
    // RFC 7208 5.6: ip6 never matches an IPv4 client, an IPv4-mapped client is IPv4 (5).
    let dns = MemoryDns::default().txt("example.org", "v=spf1 ip6:::/0 -all");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Fail);
    assert_eq!(result(&dns, "::ffff:192.0.2.1").await, AuthResult::Fail);
    assert_eq!(result(&dns, "2001:db8::1").await, AuthResult::Pass);
    let dns = MemoryDns::default().txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    assert_eq!(result(&dns, "::ffff:192.0.2.1").await, AuthResult::Pass);
}

#[tokio::test]
async fn a_and_mx_with_dual_cidr() {
    // RFC 7208 5.3, 5.4: a/mx compare the client's family's records with its CIDR length.
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 a/24 mx:mail.example.org//64 -all")
        .a("example.org", "192.0.2.200")
        .mx("mail.example.org", "mx.example.org")
        .a("mx.example.org", "2001:db8::1");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Pass);
    assert_eq!(result(&dns, "2001:db8::ffff").await, AuthResult::Pass);
    assert_eq!(result(&dns, "198.51.100.1").await, AuthResult::Fail);
}

#[tokio::test]
async fn more_than_ten_dns_terms_is_permerror() {
    // RFC 7208 4.6.4: at most 10 include/a/mx/ptr/exists/redirect terms.
    let ten = "v=spf1 a a a a a a a a a a ip4:192.0.2.1";
    let dns = MemoryDns::default()
        .txt("example.org", ten)
        .a("example.org", "10.0.0.1");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Pass);
    let eleven = "v=spf1 a a a a a a a a a a a ip4:192.0.2.1";
    let dns = MemoryDns::default()
        .txt("example.org", eleven)
        .a("example.org", "10.0.0.1");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn more_than_two_void_lookups_is_permerror() {
    // RFC 7208 4.6.4: a third lookup with no answer ends in permerror.
    let two = "v=spf1 a:n1.example.org a:n2.example.org ?all";
    let dns = MemoryDns::default().txt("example.org", two);
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Neutral);
    let three = "v=spf1 a:n1.example.org a:n2.example.org exists:n3.example.org ?all";
    let dns = MemoryDns::default().txt("example.org", three);
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn more_than_ten_mx_names_is_permerror() {
    // RFC 7208 4.6.4: an mx term may look at 10 names at most.
    let mut dns = MemoryDns::default().txt("example.org", "v=spf1 mx -all");
    for i in 0..11 {
        dns = dns.mx("example.org", &format!("mx{i}.example.org"));
    }
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn include_results() {
    // RFC 7208 5.2: pass matches, fail does not, none and permerror are permerror,
    // temperror is temperror.
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 include:inc.example.org -all")
        .txt("inc.example.org", "v=spf1 -all");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Fail);
    let dns = MemoryDns::default().txt("example.org", "v=spf1 include:none.example.org ~all");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 include:slow.example.org ~all")
        .failing("slow.example.org");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::TempError);
}

#[tokio::test]
async fn redirect_to_no_record_is_permerror_and_loops_end() {
    // RFC 7208 6.1: redirect to a domain without a record → permerror; a loop ends at the
    // term limit (4.6.4).
    let dns = MemoryDns::default().txt("example.org", "v=spf1 redirect=none.example.org");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
    let dns = MemoryDns::default().txt("example.org", "v=spf1 redirect=example.org");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[tokio::test]
async fn failed_exp_lookup_never_changes_the_result() {
    // RFC 7208 6.2: the explanation is looked up after the result; its failure is ignored.
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 -all exp=exp.example.org")
        .failing("exp.example.org");
    let v = run(&dns, "192.0.2.1", "alice@example.org").await;
    assert_eq!((v.result, v.explanation), (AuthResult::Fail, None));
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 -all exp=exp.example.org")
        .txt("exp.example.org", "%{i} is not one of %{d}'s servers");
    let v = run(&dns, "192.0.2.1", "alice@example.org").await;
    assert_eq!(
        v.explanation.as_deref(),
        Some("192.0.2.1 is not one of example.org's servers")
    );
}

#[tokio::test]
async fn macro_expansion_examples_of_rfc_7208_7_4() {
    // RFC 7208 7.4, with <sender> strong-bad@email.example.com and <ip> 192.0.2.3.
    let dns = MemoryDns::default()
        .txt("email.example.com", "v=spf1 -all exp=exp.example.com")
        .txt(
            "exp.example.com",
            "%{s} %{o} %{d} %{d4} %{d3} %{d2} %{d1} %{dr} %{d2r} %{l} %{l-} %{lr} %{lr-} %{l1r-} %{ir}.%{v}._spf.%{d2}",
        );
    let v = run(&dns, "192.0.2.3", "strong-bad@email.example.com").await;
    assert_eq!(
        v.explanation.as_deref(),
        Some(
            "strong-bad@email.example.com email.example.com email.example.com \
             email.example.com email.example.com example.com com com.example.email \
             example.email strong-bad strong.bad strong-bad bad.strong strong \
             3.2.0.192.in-addr._spf.example.com"
        )
    );
    let dns = MemoryDns::default()
        .txt("email.example.com", "v=spf1 -all exp=exp.example.com")
        .txt("exp.example.com", "%{ir}.%{v}._spf.%{d2} %{S}");
    let v = run(&dns, "2001:db8::cb01", "strong-bad@email.example.com").await;
    assert_eq!(
        v.explanation.as_deref(),
        Some(
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com \
             strong-bad%40email.example.com"
        )
    );
}

#[tokio::test]
async fn ptr_needs_a_validated_name() {
    // RFC 7208 5.5: a PTR name counts only when its addresses include the client's.
    let dns = MemoryDns::default()
        .txt("example.org", "v=spf1 ptr -all")
        .ptr("192.0.2.1", "mail.example.org")
        .a("mail.example.org", "192.0.2.1")
        .ptr("192.0.2.2", "fake.example.org")
        .a("fake.example.org", "192.0.2.99");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::Pass);
    assert_eq!(result(&dns, "192.0.2.2").await, AuthResult::Fail);
}

#[tokio::test]
async fn unusable_dns_name_is_permerror() {
    // RFC 7208 4.8 / 7.3: an expanded name with an empty or over-long label is no DNS name.
    let dns = MemoryDns::default().txt("example.org", "v=spf1 a:%{l}..example.org -all");
    assert_eq!(result(&dns, "192.0.2.1").await, AuthResult::PermError);
}

#[test]
fn networks() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(in_network(ip("192.0.2.1"), ip("192.0.2.0"), 24));
    assert!(!in_network(ip("192.0.3.1"), ip("192.0.2.0"), 24));
    assert!(in_network(ip("1.2.3.4"), ip("0.0.0.0"), 0));
    assert!(!in_network(ip("1.2.3.4"), ip("::"), 0));
    assert!(in_network(ip("2001:db8::1"), ip("2001:db8::"), 32));
}
