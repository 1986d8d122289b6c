//! MTA-STS, sending side (RFC 8461; D6, issue 13 items 1 and 5) through the relay: a policy
//! served over HTTPS on loopback by a test server whose certificate comes from the relay's
//! test CA (`outbound.extra_trust_roots`), the `_mta-sts` record, the policy host and the MX
//! hosts in the test's own DNS, real rustls handshakes on both sides.

mod common;

use common::https::{bind_https_port, serve_https, HttpsServer};
use common::mx_sink::{Behaviour, Sink};
use common::relay::{
    ip, server_tls, server_tls_from_pem, setup, wait_for_deferral, Setup, MX1, MX2, WAIT,
};
use std::sync::{Arc, Mutex};
use tlsgate::queue::RecipientStatus;
use tlsgate::tls_report::{PolicyType, ResultType, SessionResult, TlsReportSink};
use tokio::net::TcpListener;

/// Where `mta-sts.partner.test` lives.
const POLICY_HOST_IP: &str = "127.0.0.5";

/// An enforce policy for every MX of partner.test.
const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: *.partner.test\r\nmax_age: 86400\r\n";

/// The policy server: the shared HTTPS test server (`tests/common/https.rs`).
type PolicyServer = HttpsServer;

/// A listener for the policy server at [`POLICY_HOST_IP`].
async fn bind_policy_port() -> (TcpListener, u16) {
    bind_https_port(POLICY_HOST_IP).await
}

/// Serves `policy` over HTTPS on `listener` with `tls`.
fn serve_policy(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    policy: &str,
) -> PolicyServer {
    serve_https(listener, tls, policy.as_bytes())
}

/// TLS reports the relay made (RFC 8460), collected.
#[derive(Default)]
struct Collected(Mutex<Vec<SessionResult>>);

impl TlsReportSink for Collected {
    fn record(&self, session: SessionResult) {
        self.0.lock().unwrap().push(session);
    }
}

impl Collected {
    fn all(&self) -> Vec<SessionResult> {
        self.0.lock().unwrap().clone()
    }
}

/// A relay whose reports go to a [`Collected`], `partner.test` publishing `_mta-sts` with
/// `id=1` and its policy host at [`POLICY_HOST_IP`], and the policy server (its certificate
/// from the relay's CA for `mta-sts.partner.test`, or `policy_tls` when given) serving
/// `policy`. MX records are the test's.
async fn relay_with_policy(
    policy: &str,
    policy_tls: Option<Arc<rustls::ServerConfig>>,
) -> (Setup, PolicyServer, Arc<Collected>) {
    let (listener, https_port) = bind_policy_port().await;
    let mut s = setup(
        "retry_schedule = [\"1h\"]",
        &format!("[mta_sts]\nenabled = true\nhttps_port = {https_port}\n"),
    )
    .await;
    let tls = policy_tls.unwrap_or_else(|| server_tls(&s.relay.ca, &["mta-sts.partner.test"]));
    let server = serve_policy(listener, tls, policy);
    s.dns.add_txt("_mta-sts.partner.test", "v=STSv1; id=1;");
    s.dns.add_ip("mta-sts.partner.test", ip(POLICY_HOST_IP));
    let reports = Arc::new(Collected::default());
    s.restart_with_reports(reports.clone()).await;
    (s, server, reports)
}

/// `mx<n>.partner.test` (or another name) as MX with preference `pref` at `addr`.
fn mx(s: &Setup, pref: u16, name: &str, addr: &str) {
    s.dns.add_mx("partner.test", pref, name);
    s.dns.add_ip(name, ip(addr));
}

/// The value of one metric series in the relay's `/metrics` text (0 when absent).
fn metric(s: &Setup, series: &str) -> u64 {
    let text = s.relay.running().metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// MX 10 `mx1.partner.test` with a valid certificate; one message delivered under the policy,
/// which was fetched once for it.
async fn delivered_once(s: &Setup, server: &PolicyServer) -> Sink {
    mx(s, 10, "mx1.partner.test", MX1);
    let sink = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.submit("alice@example.no", &["bob@partner.test"], "first")
        .await;
    sink.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(server.requests(), 1);
    sink
}

const DELIVERED_BY_STS: &str =
    "tlsgate_deliveries_total{policy_source=\"mta-sts\",result=\"delivered\",tls_level=\"verify\"}";

/// RFC 8461 section 4.2 / issue 13 item 5: enforce with a matching MX → delivered over TLS
/// verified for the MX host name; the decision's source is `mta-sts`; the policy was fetched
/// once, before the first attempt, and is counted in the gauge.
#[tokio::test]
async fn enforce_with_a_matching_mx_is_delivered_with_verified_tls() {
    let (s, server, _) = relay_with_policy(ENFORCE, None).await;
    mx(&s, 10, "mx1.partner.test", MX1);
    let sink = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.submit("alice@example.no", &["bob@partner.test"], "sts enforce")
        .await;
    let got = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["bob@partner.test".to_string()]);
    assert!(got[0].tls.is_some(), "delivered over TLS");
    assert_eq!(got[0].sni.as_deref(), Some("mx1.partner.test"));
    s.wait_queue_empty().await;
    assert_eq!(metric(&s, DELIVERED_BY_STS), 1);
    assert_eq!(server.requests(), 1);
    assert_eq!(metric(&s, "tlsgate_mta_sts_fetch_total{result=\"ok\"}"), 1);
    assert_eq!(metric(&s, "tlsgate_mta_sts_policies{mode=\"enforce\"}"), 1);
}

/// RFC 8461 section 4.1: an MX host that matches no `mx` pattern is not used, even when it
/// is the preferred one and would take the mail; the matching MX gets it.
#[tokio::test]
async fn enforce_skips_an_mx_that_matches_no_pattern() {
    let (s, _server, _) = relay_with_policy(ENFORCE, None).await;
    mx(&s, 10, "mx.elsewhere.test", MX1);
    mx(&s, 20, "mx2.partner.test", MX2);
    let outside = s
        .tls_sink(MX1, &["mx.elsewhere.test"], Behaviour::default())
        .await;
    let inside = s
        .tls_sink(MX2, &["mx2.partner.test"], Behaviour::default())
        .await;
    s.submit("alice@example.no", &["bob@partner.test"], "sts mx")
        .await;
    inside.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(
        outside.connections(),
        0,
        "the host outside the policy was contacted"
    );
    assert_eq!(
        metric(
            &s,
            "tlsgate_tls_failures_total{reason=\"mta_sts_mx_mismatch\"}"
        ),
        1
    );
}

/// RFC 8461 section 4.2: under enforce the certificate must be valid for the MX host name;
/// one for another name defers the mail (4.7.5), never plaintext.
#[tokio::test]
async fn enforce_with_a_certificate_for_another_name_defers() {
    let (s, _server, _) = relay_with_policy(ENFORCE, None).await;
    mx(&s, 10, "mx1.partner.test", MX1);
    let sink = s
        .tls_sink(MX1, &["other.example"], Behaviour::default())
        .await;
    s.submit("alice@example.no", &["bob@partner.test"], "sts mismatch")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"));
    let reply = state.last_reply.unwrap_or_default();
    assert!(
        reply.contains("certificate does not match mx1.partner.test"),
        "{reply}"
    );
    assert!(sink.messages().is_empty());
    assert_eq!(
        metric(
            &s,
            "tlsgate_tls_failures_total{reason=\"hostname_mismatch\"}"
        ),
        1
    );
}

/// RFC 8461 section 3.3: a policy host whose HTTPS certificate is not valid gives no policy;
/// the mail goes as without MTA-STS (here: plaintext to an MX without STARTTLS), and the
/// failure is counted and reported as `sts-webpki-invalid` (RFC 8460 section 4.3.3).
#[tokio::test]
async fn policy_host_with_an_invalid_certificate_means_no_policy() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["mta-sts.partner.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let untrusted = server_tls_from_pem(&cert.pem(), &key.serialize_pem());
    let (s, server, reports) = relay_with_policy(ENFORCE, Some(untrusted)).await;
    mx(&s, 10, "mx1.partner.test", MX1);
    let sink = s.sink(MX1, Behaviour::default()).await;
    s.submit("alice@example.no", &["bob@partner.test"], "sts webpki")
        .await;
    let got = sink.wait_for_messages(1, WAIT).await;
    assert!(
        got[0].tls.is_none(),
        "plaintext, as `may` allows without STARTTLS"
    );
    s.wait_queue_empty().await;
    // The handshake failed before any HTTP request.
    assert_eq!(server.requests(), 0);
    assert_eq!(
        metric(&s, "tlsgate_mta_sts_fetch_total{result=\"webpki_invalid\"}"),
        1
    );
    let reported = reports.all();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].policy.policy_type, PolicyType::Sts);
    assert_eq!(reported[0].policy.policy_domain, "partner.test");
    assert_eq!(reported[0].receiving_mx_hostname, "");
    assert_eq!(reported[0].result, Err(ResultType::StsWebpkiInvalid));
    // In words, as for SMTP peers: not rustls' `UnknownIssuer`.
    let detail = reported[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("certificate not trusted") && !detail.contains("UnknownIssuer"),
        "{detail}"
    );
}

/// RFC 8461 section 5, `testing`: the mail is delivered as without the policy (here over TLS
/// with a certificate for the wrong name, accepted at `may`), and what enforce would have
/// said is reported: `certificate-host-mismatch` for that MX, under the `sts` policy.
#[tokio::test]
async fn testing_mode_delivers_and_reports_the_failure() {
    let testing = "version: STSv1\nmode: testing\nmx: *.partner.test\nmax_age: 86400\n";
    let (s, _server, reports) = relay_with_policy(testing, None).await;
    mx(&s, 10, "mx1.partner.test", MX1);
    let sink = s
        .tls_sink(MX1, &["wrong.example"], Behaviour::default())
        .await;
    s.submit("alice@example.no", &["bob@partner.test"], "sts testing")
        .await;
    sink.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(
        metric(
            &s,
            "tlsgate_deliveries_total{policy_source=\"opportunistic\",result=\"delivered\",\
             tls_level=\"may\"}"
        ),
        1
    );
    assert_eq!(metric(&s, "tlsgate_mta_sts_policies{mode=\"testing\"}"), 1);
    let reported = reports.all();
    assert_eq!(reported.len(), 1, "{reported:?}");
    let session = &reported[0];
    assert_eq!(session.result, Err(ResultType::CertificateHostMismatch));
    assert_eq!(session.receiving_mx_hostname, "mx1.partner.test");
    assert_eq!(session.receiving_ip, Some(ip(MX1)));
    assert_eq!(session.policy.policy_type, PolicyType::Sts);
    assert_eq!(session.policy.policy_domain, "partner.test");
    assert_eq!(session.policy.mx_host, vec!["*.partner.test".to_string()]);
    assert_eq!(
        session.policy.policy_strings,
        vec![
            "version: STSv1",
            "mode: testing",
            "mx: *.partner.test",
            "max_age: 86400"
        ]
    );
}

/// RFC 8461 section 5.1: the cached policy survives a restart (no refetch for the same id),
/// and when the id changes but the policy server is down, the cached policy stays in force:
/// an MX certificate for the wrong name is then refused, not accepted as `may` would.
#[tokio::test]
async fn cached_policy_survives_a_restart_and_a_failed_fetch() {
    let (mut s, server, reports) = relay_with_policy(ENFORCE, None).await;
    let sink = delivered_once(&s, &server).await;

    // Same id after a restart: the policy comes from the cache file.
    s.restart_with_reports(reports.clone()).await;
    s.submit("alice@example.no", &["bob@partner.test"], "second")
        .await;
    sink.wait_for_messages(2, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(server.requests(), 1, "no refetch for an unchanged id");
    assert_eq!(metric(&s, DELIVERED_BY_STS), 1);

    // A new id, the policy server down, the MX presenting a certificate for another name.
    s.dns.set_txt("_mta-sts.partner.test", "v=STSv1; id=2;");
    server.set_status(503);
    sink.set_behaviour(Behaviour {
        tls: Some(server_tls(&s.relay.ca, &["other.example"])),
        ..Behaviour::default()
    });
    s.restart_with_reports(reports.clone()).await;
    s.submit("alice@example.no", &["bob@partner.test"], "third")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.7.5"));
    assert_eq!(server.requests(), 2, "the new id was fetched");
    assert_eq!(
        metric(&s, "tlsgate_mta_sts_fetch_total{result=\"fetch_error\"}"),
        1
    );
    assert_eq!(sink.messages().len(), 2);
    let failures: Vec<_> = reports
        .all()
        .into_iter()
        .filter(|r| r.result == Err(ResultType::StsPolicyFetchError))
        .collect();
    assert_eq!(failures.len(), 1);
    // The report of a failed refetch names the cached policy it kept (RFC 8460 4.4).
    assert_eq!(
        failures[0].policy.mx_host,
        vec!["*.partner.test".to_string()]
    );
}

/// RFC 8461 section 3.1 and 5: a new id means a new policy, fetched before the next
/// delivery: here it no longer lists the MX, which is then skipped and the mail deferred.
#[tokio::test]
async fn a_new_id_is_fetched_and_its_policy_applies() {
    let (mut s, server, reports) = relay_with_policy(ENFORCE, None).await;
    let sink = delivered_once(&s, &server).await;

    server.set_body(b"version: STSv1\nmode: enforce\nmx: *.moved.test\nmax_age: 86400\n");
    s.dns.set_txt("_mta-sts.partner.test", "v=STSv1; id=2;");
    // A restart gives a fresh resolver, so the new record is seen at once (TTL 60 s).
    s.restart_with_reports(reports).await;
    s.submit("alice@example.no", &["bob@partner.test"], "second")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(server.requests(), 2);
    let reply = state.last_reply.unwrap_or_default();
    assert!(
        reply.contains("matches none of the MTA-STS policy's mx patterns"),
        "{reply}"
    );
    assert_eq!(state.status, RecipientStatus::Deferred);
    assert_eq!(sink.messages().len(), 1);
}

/// `mta_sts.enabled = false`: no lookups, no fetch (issue 13 item 1).
#[tokio::test]
async fn disabled_means_no_lookup() {
    let (listener, https_port) = bind_policy_port().await;
    let s = setup(
        "retry_schedule = [\"1h\"]",
        &format!("[mta_sts]\nenabled = false\nhttps_port = {https_port}\n"),
    )
    .await;
    let server = serve_policy(
        listener,
        server_tls(&s.relay.ca, &["mta-sts.partner.test"]),
        ENFORCE,
    );
    s.dns.add_txt("_mta-sts.partner.test", "v=STSv1; id=1;");
    s.dns.add_ip("mta-sts.partner.test", ip(POLICY_HOST_IP));
    mx(&s, 10, "mx1.partner.test", MX1);
    let sink: Sink = s.sink(MX1, Behaviour::default()).await;
    s.submit("alice@example.no", &["bob@partner.test"], "off")
        .await;
    sink.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(server.requests(), 0);
}

/// Issue 13 item 4: `tlsgate probe` shows the `_mta-sts` record, the policy (mode, mx,
/// max_age, when fetched) and the `_smtp._tls` TLSRPT record with its report targets, in text
/// and in JSON; the MX host is decided by MTA-STS as delivery decides it.
#[tokio::test]
async fn probe_shows_the_mta_sts_policy_and_the_tlsrpt_record() {
    let (s, _server, _) = relay_with_policy(ENFORCE, None).await;
    mx(&s, 10, "mx1.partner.test", MX1);
    let _sink = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.dns.add_txt(
        "_smtp._tls.partner.test",
        "v=TLSRPTv1; rua=mailto:tlsrpt@partner.test,https://reports.partner.test/v1",
    );
    let run = |json: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
        cmd.args(["probe", "partner.test", "--timeout", "5s", "--config"])
            .arg(s.relay.dir.path().join("tlsgate.toml"))
            .kill_on_drop(true);
        if json {
            cmd.arg("--json");
        }
        async move {
            let out = tokio::time::timeout(WAIT, cmd.output())
                .await
                .expect("probe finished in time")
                .expect("probe ran");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let text = run(false).await;
    assert!(
        text.contains("MTA-STS: record v=STSv1 id=1; policy enforce, mx *.partner.test"),
        "{text}"
    );
    assert!(text.contains("max_age 86400"), "{text}");
    assert!(
        text.contains(
            "TLSRPT: v=TLSRPTv1, rua mailto:tlsrpt@partner.test https://reports.partner.test/v1"
        ),
        "{text}"
    );
    assert!(
        text.contains("(mta-sts)") || text.contains("MTA-STS policy"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(true).await).expect("probe JSON");
    let domain = &json[0];
    assert_eq!(domain["mta_sts"]["mode"], "enforce", "{json}");
    assert_eq!(domain["mta_sts"]["mx"][0], "*.partner.test", "{json}");
    assert!(domain["mta_sts"]["fetched_at"].is_string(), "{json}");
    assert_eq!(
        domain["tls_rpt"],
        "v=TLSRPTv1, rua mailto:tlsrpt@partner.test https://reports.partner.test/v1"
    );
}
