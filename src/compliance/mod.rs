//! The compliance check (T7: "after any change or replacement of the server, test that the
//! domain list configuration still holds"): `tlsgate domains check` and `tlsgate probe`.
//!
//! Each domain is checked exactly as delivery would treat it: the same routing (MX, implicit
//! MX, null MX), the same DNS facts (DNSSEC status, TLSA records), the same TLS decision
//! (`policy::decision::decide`) and the same connection opening (`delivery::attempt::
//! open_for_policy`, plaintext retry for `may` included). The only difference is that the
//! connection ends with QUIT instead of a transaction (issue 12 item 1).
//!
//! The result is for people (issue 15 items 1 and 2): a verdict per domain (`pass`, `warn`
//! when a certificate in use expires within [`EXPIRY_WARNING_DAYS`], `fail`), progress while
//! it runs ([`progress`]), a summary line ([`summary_line`]) and a dated HTML page for the
//! auditor ([`html`], Bits 5.2.6: keep the evidence of the test).

pub mod html;
pub mod progress;

use crate::config::Config;
use crate::delivery::attempt::{self, open_for_policy};
use crate::delivery::client::{ClientError, ConnectParams, Timeouts};
use crate::delivery::route::{self, Destination};
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::mta_sts::{MtaSts, StsLookup};
use crate::policy::decision::{self, Demands, Requirement, TlsaFacts};
use crate::policy::domain_list::DomainList;
use crate::tls::client::ClientTls;
use crate::tls::verify::PresentedChain;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A host whose certificate expires within this many days passes with a warning (issue 15
/// item 1): partners' certificates must not expire without anyone noticing.
pub const EXPIRY_WARNING_DAYS: i64 = 21;

/// The outcome of a domain or host as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Delivery would not succeed (the order puts failures first in reports).
    Fail,
    /// Delivery would succeed, but something needs attention soon (an expiring certificate).
    Warn,
    /// Delivery would succeed.
    Pass,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Fail => "fail",
            Verdict::Warn => "warn",
            Verdict::Pass => "pass",
        }
    }

    /// The verdict of a host or domain that passes or not, with `warnings` (the one rule, used
    /// by `domains check` and `domains status`).
    pub fn of(pass: bool, warnings: &[String]) -> Verdict {
        match (pass, warnings.is_empty()) {
            (false, _) => Verdict::Fail,
            (true, false) => Verdict::Warn,
            (true, true) => Verdict::Pass,
        }
    }
}

/// What was found on one MX address.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// The MX host name.
    pub mx_host: String,
    /// The address connected to.
    pub address: String,
    /// This host meets the domain's policy: delivery would hand mail to it.
    pub pass: bool,
    /// The TLS level delivery would apply to this host.
    pub level: String,
    /// Which rule set it (`list`, `config`, `dane`, `requiretls`, `opportunistic`).
    pub policy_source: String,
    /// The DNSSEC status of the MX records (`secure`/`insecure`).
    pub mx_dnssec: String,
    /// The host's TLSA records as found: `secure: 3 1 1 …`, `insecure`, `not looked up (…)`
    /// or `lookup failed: …`.
    pub tlsa: Vec<String>,
    /// The connection went on in plaintext after opportunistic TLS failed, and why TLS failed.
    pub tls_failed_then_plaintext: Option<String>,
    /// Why it passes or fails, in words.
    pub reason: String,
    /// `TLSv1.2`/`TLSv1.3`; `None` when no TLS session was made.
    pub tls_version: Option<String>,
    /// The negotiated cipher suite; `None` without TLS.
    pub cipher: Option<String>,
    /// The certificate's subject DN; `None` without a certificate.
    pub cert_subject: Option<String>,
    /// The certificate's issuer DN; `None` without a certificate.
    pub cert_issuer: Option<String>,
    /// End of the certificate's validity (RFC 2822 date); `None` without a certificate.
    pub cert_not_after: Option<String>,
    /// SHA-256 of the certificate, hex (for audit and comparison over time).
    pub cert_sha256: Option<String>,
    /// The certificate's subjectAltName entries (`DNS:…`, `IP:…`, …); empty without a
    /// certificate or without the extension.
    pub cert_sans: Vec<String>,
    /// End of the certificate's validity in seconds since the Unix epoch (for metrics).
    pub cert_not_after_unix: Option<i64>,
    /// Whole days from the check until the certificate expires; negative once it has.
    pub cert_expires_in_days: Option<i64>,
    /// The host passes on a certificate that chains only to a root of
    /// `outbound.extra_trust_roots`, not to a publicly trusted one (Bits 5.1.2; its reason
    /// says so too, [`PRIVATE_ROOT_NOTE`]).
    pub private_root: bool,
    /// What needs attention although the host passes (issue 15 item 1: a certificate that
    /// expires within [`EXPIRY_WARNING_DAYS`]).
    pub warnings: Vec<String>,
    /// `fail`, `warn` (passes with warnings) or `pass`.
    pub verdict: Verdict,
}

/// The verdict for one domain.
#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    /// The domain checked.
    pub domain: String,
    /// It is on the tvungen TLS domain list.
    pub listed: bool,
    /// The TLS level delivery would apply.
    pub level: String,
    /// Where the level came from, in words ([`PolicySource`](crate::policy::PolicySource)'s
    /// display text).
    pub policy_source: String,
    /// Delivery would succeed: at least one host meets the policy.
    pub pass: bool,
    /// Why the domain fails when no host could be checked (DNS, null MX).
    pub reason: Option<String>,
    /// One report per MX address tried.
    pub hosts: Vec<HostReport>,
    /// The MTA-STS record and policy (RFC 8461); `None` when MTA-STS is off or does not
    /// count for the domain (an entry or the list decides).
    pub mta_sts: Option<StsReport>,
    /// The domain's TLSRPT record (RFC 8460 section 3): where its TLS reports go (`rua`), or
    /// why it takes none (issue 13 item 4).
    pub tls_rpt: String,
    /// The warnings of its hosts, each prefixed with the host (`mx1.example.no: …`).
    pub warnings: Vec<String>,
    /// `fail`, `warn` (passes, with warnings) or `pass`.
    pub verdict: Verdict,
}

/// What `probe` shows of a domain's MTA-STS (issue 13 item 4).
#[derive(Debug, Clone, Serialize)]
pub struct StsReport {
    /// The `_mta-sts` record's id, or why there is none.
    pub record: String,
    /// The policy in force: `enforce` or `testing`; `None`: no policy.
    pub mode: Option<String>,
    /// Its `mx` patterns.
    pub mx: Vec<String>,
    /// Its `max_age`, in seconds.
    pub max_age: Option<u64>,
    /// When it was fetched (RFC 3339).
    pub fetched_at: Option<String>,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
    /// `fetched now` or `cached`.
    pub from: Option<String>,
    /// A failed fetch, or `mode: none` (the policy was withdrawn).
    pub note: Option<String>,
}

impl StsReport {
    fn of(found: &StsLookup) -> StsReport {
        let time = |secs: u64| {
            crate::datetime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        };
        let policy = found.policy.as_ref();
        StsReport {
            record: match &found.record {
                Ok(record) => format!("v=STSv1 id={}", record.id),
                Err(why) => why.to_string(),
            },
            mode: policy.map(|p| p.policy.mode.to_string()),
            mx: policy.map(|p| p.policy.mx.clone()).unwrap_or_default(),
            max_age: policy.map(|p| p.policy.max_age),
            fetched_at: policy.map(|p| time(p.fetched_at)),
            expires: policy.map(|p| time(p.expires)),
            from: policy.map(|_| {
                if found.fetched_now {
                    "fetched now".to_string()
                } else {
                    "cached".to_string()
                }
            }),
            note: match (&found.fetch_error, found.withdrawn) {
                (Some(e), _) => Some(format!(
                    "{e} ({}; a cached policy stays in force until it expires)",
                    e.result_type().as_str()
                )),
                (None, true) => Some("mode none: the policy was withdrawn".into()),
                (None, false) => None,
            },
        }
    }

    /// One line for the table.
    fn line(&self) -> String {
        let policy = match &self.mode {
            Some(mode) => format!(
                "policy {mode}, mx {}, max_age {}, fetched {} ({}), expires {}",
                self.mx.join(" "),
                self.max_age.unwrap_or(0),
                self.fetched_at.as_deref().unwrap_or("-"),
                self.from.as_deref().unwrap_or("-"),
                self.expires.as_deref().unwrap_or("-"),
            ),
            None => "no policy".into(),
        };
        let note = self
            .note
            .as_deref()
            .map(|n| format!("; {n}"))
            .unwrap_or_default();
        format!("MTA-STS: record {}; {policy}{note}", self.record)
    }
}

/// The `_smtp._tls` TXT record of `domain` as the report job reads it (RFC 8460 section 3):
/// `rua …` with every target, or why the domain takes no reports.
async fn tls_rpt_record(resolver: &dyn Resolver, domain: &Domain) -> String {
    let name = format!("_smtp._tls.{}", domain.as_str());
    match resolver.txt(&name).await {
        Err(e) => format!("lookup failed: {e}"),
        Ok(records) => match crate::reporting::tls::record::parse_records(&records.value) {
            Ok(ruas) => format!(
                "v=TLSRPTv1, rua {}",
                ruas.iter().map(|r| r.uri()).collect::<Vec<_>>().join(" ")
            ),
            Err(e) => e.to_string(),
        },
    }
}

/// Checks one domain; `timeout` bounds every connect and reply. `mta_sts`: the MTA-STS
/// service (`None` when `mta_sts.enabled = false`), asked exactly as delivery asks it.
pub async fn check_domain(
    config: &Config,
    list: &DomainList,
    resolver: &dyn Resolver,
    (tls, mta_sts): (&ClientTls, Option<&MtaSts>),
    domain: &Domain,
    timeout: Duration,
) -> DomainReport {
    let destination = Destination::Domain(domain.clone());
    let rules = attempt::rules(config, list);
    let target = attempt::target_of(config, &destination);
    let demands = Demands::default();
    let base = decision::base_policy(rules, target, demands);
    let mut report = DomainReport {
        domain: domain.to_string(),
        listed: base.listed,
        level: base.level.to_string(),
        policy_source: base.source.to_string(),
        pass: false,
        reason: None,
        hosts: Vec::new(),
        mta_sts: None,
        tls_rpt: tls_rpt_record(resolver, domain).await,
        warnings: Vec::new(),
        verdict: Verdict::Fail,
    };
    let route = match route::hosts_for(config, resolver, &destination).await {
        Ok(route) => route,
        Err(e) => {
            report.reason = Some(e.to_string());
            return report;
        }
    };
    let wants_tlsa = decision::wants_tlsa(rules, target);
    // The same MTA-STS lookup as delivery's (RFC 8461 section 5).
    let mut sts_policy = None;
    if let (Some(service), true) = (mta_sts, decision::wants_sts(rules, target)) {
        let found = service.lookup(domain).await;
        report.mta_sts = Some(StsReport::of(&found));
        sts_policy = found.policy.map(|c| c.policy);
    }
    // The domain line shows the policy of the first host (DANE is decided per host).
    let mut shown = None;
    for host in &route.hosts {
        let (tlsa, policy) = attempt::decide_for_host(
            resolver,
            (rules, target, demands),
            &route,
            host,
            wants_tlsa,
            sts_policy.as_ref(),
        )
        .await;
        shown.get_or_insert((policy.level, policy.source));
        let empty = HostReport {
            mx_host: host.name.clone(),
            address: String::new(),
            pass: false,
            level: policy.level.to_string(),
            policy_source: policy.source.label().to_string(),
            mx_dnssec: route.mx_security.as_str().to_string(),
            tlsa: describe_tlsa(&tlsa, &host.name),
            tls_failed_then_plaintext: None,
            reason: String::new(),
            tls_version: None,
            cipher: None,
            cert_subject: None,
            cert_issuer: None,
            cert_not_after: None,
            cert_sha256: None,
            cert_sans: Vec::new(),
            cert_not_after_unix: None,
            cert_expires_in_days: None,
            private_root: false,
            warnings: Vec::new(),
            verdict: Verdict::Fail,
        };
        if let Requirement::Skip { reason, .. } = &policy.require {
            report.hosts.push(HostReport {
                address: "-".into(),
                reason: reason.clone(),
                ..empty
            });
            continue;
        }
        for addr in &host.addrs {
            let params = ConnectParams {
                addr: *addr,
                host: &host.name,
                helo_name: &config.server.hostname,
                require: &policy.require,
                tls,
                timeouts: Timeouts {
                    connect: timeout,
                    command: timeout,
                    data: timeout,
                },
            };
            let presented = PresentedChain::default();
            let host_report = match open_for_policy(&params, Some(&presented)).await {
                Ok((conn, tls_failure)) => {
                    let mut r = HostReport {
                        address: addr.to_string(),
                        pass: true,
                        reason: match (&conn.tls, &policy.require) {
                            (Some(_), Requirement::Dane { pkix, .. }) => format!(
                                "certificate matches TLSA {}{}",
                                presented.tlsa_match().unwrap_or_default(),
                                if *pkix {
                                    " and is valid for the policy"
                                } else {
                                    " (DANE)"
                                }
                            ),
                            (Some(_), Requirement::Pkix { .. }) => {
                                "certificate valid for policy".into()
                            }
                            (Some(_), _) => "TLS (certificate not checked at this level)".into(),
                            (None, _) => match &tls_failure {
                                Some(f) => format!(
                                    "would deliver without TLS: TLS failed ({f}), plaintext \
                                     allowed at this level"
                                ),
                                None => "would deliver without TLS: no STARTTLS offered, \
                                         plaintext allowed at this level"
                                    .into(),
                            },
                        },
                        tls_version: conn.tls.as_ref().map(|t| t.version.clone()),
                        cipher: conn.tls.as_ref().map(|t| t.cipher.clone()),
                        tls_failed_then_plaintext: tls_failure.map(|f| f.to_string()),
                        ..empty.clone()
                    };
                    if let Some(cert) = &conn.peer_certificate {
                        describe_certificate(cert.as_ref(), SystemTime::now(), &mut r);
                    }
                    if let Some(warning) = expiry_warning(&r) {
                        r.warnings.push(warning);
                    }
                    if r.pass && tls.chains_only_to_extra_roots(&conn.peer_chain) {
                        r.private_root = true;
                        r.reason.push_str(PRIVATE_ROOT_NOTE);
                    }
                    r.verdict = Verdict::of(r.pass, &r.warnings);
                    conn.quit().await;
                    r
                }
                Err(e) => {
                    let mut r = HostReport {
                        address: addr.to_string(),
                        reason: failure_text(&e),
                        ..empty.clone()
                    };
                    // A host that fails still shows the certificate it presented, when the
                    // handshake got that far (issue 12 item 4).
                    if let Some(leaf) = presented.get().first() {
                        describe_certificate(leaf.as_ref(), SystemTime::now(), &mut r);
                    }
                    r
                }
            };
            report.hosts.push(host_report);
        }
    }
    if let Some((level, source)) = shown {
        report.level = level.to_string();
        report.policy_source = source.to_string();
    }
    report.pass = report.hosts.iter().any(|h| h.pass);
    if !report.pass && report.reason.is_none() {
        report.reason = Some(format!("no MX host meets the {} policy", report.level));
    }
    report.warnings = report
        .hosts
        .iter()
        .flat_map(|h| {
            h.warnings
                .iter()
                .map(move |w| format!("{}: {w}", h.mx_host))
        })
        .collect();
    report.verdict = Verdict::of(report.pass, &report.warnings);
    report
}

/// Added to the reason of a passing host whose certificate leads only to a root the relay was
/// given in `outbound.extra_trust_roots` ([`ClientTls::chains_only_to_extra_roots`]): the
/// auditor reading the report sees that the pass does not rest on a publicly trusted root
/// (Bits 5.1.2). A mark, not a warning: a partner on a private CA agreed with the bank passes.
pub const PRIVATE_ROOT_NOTE: &str = " (the certificate chains to a root from \
     outbound.extra_trust_roots, not to a publicly trusted root)";

/// The warning for a passing host whose certificate expires within [`EXPIRY_WARNING_DAYS`]
/// (issue 15 item 1), or has expired where the level does not check it; `None` otherwise.
fn expiry_warning(host: &HostReport) -> Option<String> {
    let days = host.cert_expires_in_days?;
    if !host.pass || days >= EXPIRY_WARNING_DAYS {
        return None;
    }
    let when = host.cert_not_after.as_deref().unwrap_or("-");
    Some(if days < 0 {
        format!("certificate expired on {when} (not checked at this level)")
    } else {
        format!(
            "certificate expires in {days} day{} ({when}), within {EXPIRY_WARNING_DAYS} days",
            if days == 1 { "" } else { "s" }
        )
    })
}

/// The TLSA facts in words for the report.
/// The TLSA facts of a host as `probe` shows them; records found at a CNAME'd host's expanded
/// name say so (RFC 7672 section 2.2.3).
fn describe_tlsa(tlsa: &route::HostTlsa, host: &str) -> Vec<String> {
    let at = if tlsa.base == host {
        String::new()
    } else {
        format!(" at {}", tlsa.base)
    };
    match &tlsa.facts {
        TlsaFacts::NotLooked(why) => vec![format!("not looked up ({why})")],
        TlsaFacts::Insecure => vec!["insecure answer (not used)".into()],
        TlsaFacts::Secure(records) if records.is_empty() => vec!["none (secure denial)".into()],
        TlsaFacts::Secure(records) => records
            .iter()
            .map(|r| {
                let usable = if decision::usable(r) {
                    ""
                } else {
                    " (unusable)"
                };
                format!("secure{at}: {r}{usable}")
            })
            .collect(),
        TlsaFacts::Failed { reason, .. } => vec![format!("lookup failed: {reason}")],
    }
}

fn failure_text(e: &ClientError) -> String {
    match e {
        ClientError::Tls(f) => f.to_string(),
        other => other.to_string(),
    }
}

/// Fills the certificate facts of `report` from the DER certificate a host presented; `now`
/// is the moment the expiry is counted from. A certificate that does not parse still gets its
/// SHA-256 (the evidence stays comparable).
fn describe_certificate(der: &[u8], now: SystemTime, report: &mut HostReport) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    report.cert_sha256 = Some(digest.iter().map(|b| format!("{b:02x}")).collect());
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return;
    };
    report.cert_subject = Some(cert.subject().to_string());
    report.cert_issuer = Some(cert.issuer().to_string());
    let not_after = cert.validity().not_after;
    report.cert_not_after = not_after.to_rfc2822().ok();
    let expires = not_after.timestamp();
    report.cert_not_after_unix = Some(expires);
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    report.cert_expires_in_days = Some((expires - now).div_euclid(86_400));
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        report.cert_sans = san.value.general_names.iter().map(describe_name).collect();
    }
}

/// One subjectAltName entry in the usual `TYPE:value` notation (RFC 5280 section 4.2.1.6).
fn describe_name(name: &x509_parser::extensions::GeneralName) -> String {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(n) => format!("DNS:{n}"),
        GeneralName::RFC822Name(n) => format!("email:{n}"),
        GeneralName::URI(n) => format!("URI:{n}"),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                Err(_) => format!("IP:{bytes:02x?}"),
            },
        },
        other => format!("{other}"),
    }
}

/// Checks many domains, at most `parallel` at a time; reports come back in input order.
pub async fn check_domains(
    config: Arc<Config>,
    list: Arc<DomainList>,
    resolver: Arc<dyn Resolver>,
    (tls, mta_sts): (ClientTls, Option<Arc<MtaSts>>),
    domains: Vec<Domain>,
    timeout: Duration,
    parallel: usize,
) -> Vec<DomainReport> {
    check_domains_with_progress(
        config,
        list,
        resolver,
        (tls, mta_sts),
        domains,
        (timeout, parallel),
        &|_| {},
    )
    .await
}

/// [`check_domains`], calling `on_done` with each domain's report as soon as it is finished
/// (in the order they finish; the progress bar of issue 15 item 1). `(timeout, parallel)`:
/// the bound of every connect and reply, and how many domains are checked at a time. The
/// reports come back in input order.
pub async fn check_domains_with_progress(
    config: Arc<Config>,
    list: Arc<DomainList>,
    resolver: Arc<dyn Resolver>,
    (tls, mta_sts): (ClientTls, Option<Arc<MtaSts>>),
    domains: Vec<Domain>,
    (timeout, parallel): (Duration, usize),
    on_done: &(dyn Fn(&DomainReport) + Sync),
) -> Vec<DomainReport> {
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, domain) in domains.into_iter().enumerate() {
        let (config, list, resolver, tls, mta_sts, limit) = (
            config.clone(),
            list.clone(),
            resolver.clone(),
            tls.clone(),
            mta_sts.clone(),
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let report = check_domain(
                &config,
                &list,
                resolver.as_ref(),
                (&tls, mta_sts.as_deref()),
                &domain,
                timeout,
            )
            .await;
            (index, report)
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(pair) = done {
            on_done(&pair.1);
            reports.push(pair);
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// The human-readable table.
pub fn render_table(reports: &[DomainReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<28} {:<8} {:<28} {:<6} REASON / CERTIFICATE",
        "DOMAIN", "MX HOST", "TLS", "CIPHER", "VERDICT"
    );
    for r in reports {
        if r.hosts.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:<28} {:<8} {:<28} {:<6} {}",
                r.domain,
                "-",
                "-",
                "-",
                "FAIL",
                r.reason.as_deref().unwrap_or("")
            );
            // No `continue`: the domain's policy line below says which policy failed (review
            // finding: with the MX lookup failed, only --json said it).
        }
        for h in &r.hosts {
            let cert = match (&h.cert_subject, &h.cert_issuer, &h.cert_not_after) {
                (Some(s), Some(i), Some(n)) => format!(
                    " [subject {s}; SAN {}; issuer {i}; expires {n}; sha256 {}]",
                    if h.cert_sans.is_empty() {
                        "-".to_string()
                    } else {
                        h.cert_sans.join(" ")
                    },
                    h.cert_sha256.as_deref().unwrap_or("-")
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<24} {:<28} {:<8} {:<28} {:<6} {}{}",
                r.domain,
                h.mx_host,
                h.tls_version.as_deref().unwrap_or("-"),
                h.cipher.as_deref().unwrap_or("-"),
                match h.verdict {
                    Verdict::Pass => "pass",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                },
                h.reason,
                cert
            );
            let _ = writeln!(
                out,
                "{:<24}   {} {}: policy {} ({}), MX DNSSEC {}, TLSA {}",
                "",
                h.mx_host,
                h.address,
                h.level,
                h.policy_source,
                h.mx_dnssec,
                h.tlsa.join("; ")
            );
        }
        if let Some(sts) = &r.mta_sts {
            let _ = writeln!(out, "{:<24} {}", r.domain, sts.line());
        }
        let _ = writeln!(out, "{:<24} TLSRPT: {}", r.domain, r.tls_rpt);
        for warning in &r.warnings {
            let _ = writeln!(out, "{:<24} WARNING: {warning}", r.domain);
        }
        let _ = writeln!(
            out,
            "{:<24} policy {} ({}){}: {}",
            r.domain,
            r.level,
            r.policy_source,
            if r.listed { ", listed" } else { "" },
            if r.pass {
                "delivery would succeed".to_string()
            } else {
                format!(
                    "delivery would be deferred: {}",
                    r.reason.as_deref().unwrap_or("")
                )
            }
        );
    }
    out
}

/// The counts of a finished check and how long it took: one line for a person, e.g.
/// `checked 12 domains in 4.2s: 10 pass, 1 warn, 1 fail` (issue 15 item 1).
pub fn summary_line(reports: &[DomainReport], took: Duration) -> String {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    format!(
        "checked {} domain{} in {:.1}s: {} pass, {} warn, {} fail",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        took.as_secs_f64(),
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain whose MX lookup failed has no host rows; its policy line still says which
    /// policy could not be met (review finding: only `--json` said it).
    #[test]
    fn a_domain_without_hosts_still_shows_its_policy() {
        let report = DomainReport {
            domain: "partner.test".into(),
            listed: true,
            level: "verify".into(),
            policy_source: "tvungen TLS domain list".into(),
            pass: false,
            reason: Some("MX lookup failed: timed out".into()),
            hosts: Vec::new(),
            mta_sts: None,
            tls_rpt: "no TLSRPT record".into(),
            warnings: Vec::new(),
            verdict: Verdict::Fail,
        };
        let table = render_table(&[report]);
        assert!(
            table.contains(
                "policy verify (tvungen TLS domain list), listed: delivery would be deferred: \
                 MX lookup failed: timed out"
            ),
            "{table}"
        );
        assert!(table.contains("FAIL"), "{table}");
    }
}
