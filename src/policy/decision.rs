//! The outbound TLS decision: one pure function, [`decide`], says how much TLS one host of a
//! destination gets and what its certificate must prove (issue 12 item 1; design.md,
//! "Outbound TLS policy — resolution order").
//!
//! Delivery, `tlsgate probe` and `tlsgate domains check` all call [`decide`] with the same
//! inputs and enforce its [`Requirement`] through the same SMTP client, so the tools report
//! exactly what delivery would do. The DNS facts it reads are gathered beforehand (the MX
//! answer's DNSSEC status, the host's TLSA records); [`wants_tlsa`] says whether a destination's
//! policy reads TLSA records at all, so that nobody looks them up for nothing.
//!
//! The order, strongest first (D1, T3, RFC 7672, RFC 8689):
//! 1. an explicit `[[policy]]` entry (exact before `.suffix`, longest suffix first); `dane` and
//!    `dane-only` use TLSA records as Postfix's levels of the same names do;
//! 2. the tvungen TLS domain list: at least `verify` (T3, T9); with usable TLSA records DANE is
//!    required *as well* (a listed domain is only ever made stricter);
//! 3. DNSSEC-secure TLSA records for a destination without an entry: DANE (RFC 7672 section 2.2);
//!    TLSA records that are all unusable: mandatory unauthenticated TLS (section 2.2);
//! 4. an MTA-STS policy (RFC 8461) of a domain without entry, list or usable DANE records:
//!    `enforce` is `verify` with the MX host name, and an MX host that matches none of the
//!    policy's `mx` patterns is skipped (section 4.1, 4.2); `testing` leaves the decision to the
//!    other rows and rides along in [`TlsDecision::sts`] so that delivery can report what
//!    `enforce` would have said (RFC 8460);
//! 5. REQUIRETLS from the sender: `verify`, or DANE where usable (RFC 8689 section 4.2.1);
//! 6. otherwise `may`.
//!
//! A TLSA lookup that failed (SERVFAIL, timeout, DNSSEC bogus) makes the host unusable for now
//! ([`Requirement::Skip`]) whenever the policy would have read the records: never plaintext.

use super::domain_list::DomainList;
use super::mta_sts::{StsMode, StsPolicy};
use super::{certificate_names, NamePattern, PolicyEntry, PolicySource, ResolvedPolicy, TlsLevel};
use crate::dns::{Security, Tlsa};
use crate::domain::Domain;
use crate::tls_report::{PolicyType, ReportPolicy};

/// What the message demands of every hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demands {
    /// The sender asked for REQUIRETLS (RFC 8689).
    pub requiretls: bool,
}

/// The rules in force: the `[[policy]]` entries and the domain list.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// `[[policy]]` entries, validated by `config`.
    pub policies: &'a [PolicyEntry],
    /// The tvungen TLS domain list in force.
    pub list: &'a DomainList,
}

/// Where the mail goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The MX hosts of a recipient domain.
    Domain(&'a Domain),
    /// The internal next hop, with its configured level (`inbound.next_hop_tls`); never DANE.
    NextHop(TlsLevel),
}

/// What is known about a host's TLSA records (RFC 7672 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaFacts {
    /// Not looked up, and why: DNSSEC off or unavailable, the MX RRset or the host's addresses
    /// not secure (section 2.2.1, 2.2.3), or the policy does not read TLSA records.
    NotLooked(String),
    /// The TLSA answer was not DNSSEC-secure: as if there were none (section 2.2).
    Insecure,
    /// A secure answer: the records as published (empty: securely denied).
    Secure(Vec<Tlsa>),
    /// The lookup failed (SERVFAIL, timeout, bogus signatures): the host must not be used now
    /// (section 2.2).
    Failed {
        /// What failed, for the DSN and the log.
        reason: String,
        /// The answer was DNSSEC-bogus (D5), not merely unavailable.
        bogus: bool,
    },
}

/// The DNS facts gathered for one host of the destination.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts<'a> {
    /// The host name connected to (MX host, next hop name or its literal address).
    pub host: &'a str,
    /// The fully CNAME-expanded name of `host` when it is an alias whose whole chain is
    /// DNSSEC-secure (RFC 7672 section 2.2.3); a DANE-TA reference identifier beside `host`
    /// (section 3.2.2). `None` for no alias or an insecure expansion.
    pub expanded: Option<&'a str>,
    /// The TLSA base domain `tlsa` belongs to: `expanded` when the records were found there,
    /// else `host` (RFC 7672 section 2.2.3). A DANE connection sends it as SNI (section 8.1).
    pub tlsa_base: &'a str,
    /// The DNSSEC status of the MX RRset the host came from.
    pub mx_security: Security,
    /// The host's TLSA records.
    pub tlsa: &'a TlsaFacts,
    /// The recipient domain's MTA-STS policy in force (RFC 8461 section 5), when
    /// [`wants_sts`] said to look it up and one exists.
    pub sts: Option<&'a StsPolicy>,
}

/// What the SMTP client enforces on a connection: the output of [`decide`]. Two connections
/// with equal requirements are interchangeable (the connection pool's key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Never STARTTLS (`none`).
    Plaintext,
    /// STARTTLS when offered, certificate not checked; a TLS failure is retried in plaintext
    /// (`may`, RFC 3207 and RFC 7435).
    Opportunistic,
    /// STARTTLS required, certificate not checked (`encrypt`; TLSA records all unusable,
    /// RFC 7672 section 2.2).
    Encrypted,
    /// STARTTLS required, chain to a trusted root, a name in `names` (`verify`, `secure`;
    /// T2, T3, T9).
    Pkix {
        /// The names the certificate may carry.
        names: Vec<NamePattern>,
    },
    /// STARTTLS required, the chain matches one of `tlsa` (RFC 7672 section 3.1); a DANE-TA
    /// match also needs a name from `names` (section 3.2.2). `pkix`: the chain must also lead
    /// to a trusted root with a name from `names` (a listed domain, T2).
    Dane {
        /// The usable records (usage 2 or 3), as published.
        tlsa: Vec<Tlsa>,
        /// The reference identifiers.
        names: Vec<NamePattern>,
        /// PKIX validation is required as well.
        pkix: bool,
        /// The TLS server name (SNI) to send: the TLSA base domain (RFC 7672 section 8.1),
        /// which for a CNAME'd MX host may be its expanded name (section 2.2.3).
        server_name: String,
    },
    /// The host must not be used now: a temporary TLS failure (4.7.5).
    Skip {
        /// Why, for the DSN and the log.
        reason: String,
        /// A metric label: `dnssec_bogus`, `tlsa_lookup_failed`, `dane_required` or
        /// `mta_sts_mx_mismatch`.
        label: &'static str,
    },
}

/// Every metric label a [`Requirement::Skip`] can carry (registered at start by `metrics`).
pub const SKIP_LABELS: &[&str] = &[
    "dnssec_bogus",
    "tlsa_lookup_failed",
    "dane_required",
    "mta_sts_mx_mismatch",
];

impl Requirement {
    /// Must the connection be TLS? Everything but `Plaintext` and `Opportunistic`.
    pub fn tls_required(&self) -> bool {
        !matches!(self, Requirement::Plaintext | Requirement::Opportunistic)
    }

    /// Is the peer authenticated (PKIX or DANE)?
    pub fn authenticated(&self) -> bool {
        matches!(self, Requirement::Pkix { .. } | Requirement::Dane { .. })
    }
}

/// The decision for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDecision {
    /// The level in force (`dane` when DANE authenticates an unlisted domain; a listed domain
    /// keeps `verify`/`secure` and adds DANE).
    pub level: TlsLevel,
    /// Which rule decided: the label in logs, audit entries and metrics.
    pub source: PolicySource,
    /// The destination is on the tvungen TLS list (failures are warnings, audited, T3).
    pub listed: bool,
    /// What the client enforces.
    pub require: Requirement,
    /// The MTA-STS policy the decision was made under (`source` is
    /// [`PolicySource::MtaSts`]) or, in `testing` mode, evaluated beside it (RFC 8461 section
    /// 5, RFC 8460 section 4.4); `None` where MTA-STS does not apply.
    pub sts: Option<StsPolicy>,
}

impl TlsDecision {
    /// The RFC 8460 policy a session under this decision is reported under (sections 3 and
    /// 4.4): `tlsa` with the TLSA base domain and the records for DANE, else `no-policy-found`
    /// for the recipient `domain` (listed domains too, issue 13 item 3). `None` for the next
    /// hop (`domain` `None`), which is not a policy domain.
    ///
    /// A decision made by MTA-STS, or made beside an MTA-STS policy in `testing` mode, reports
    /// `sts` for the recipient domain with the policy's lines and `mx` patterns.
    pub fn report_policy(&self, domain: Option<&Domain>) -> Option<ReportPolicy> {
        let domain = domain?;
        if let Some(sts) = &self.sts {
            return Some(ReportPolicy {
                policy_type: PolicyType::Sts,
                policy_domain: domain.as_str().to_string(),
                policy_strings: sts.lines.clone(),
                mx_host: sts.mx.clone(),
            });
        }
        Some(match &self.require {
            Requirement::Dane {
                tlsa, server_name, ..
            } => ReportPolicy {
                policy_type: PolicyType::Tlsa,
                policy_domain: server_name.trim_end_matches('.').to_ascii_lowercase(),
                policy_strings: tlsa.iter().map(|r| r.to_string()).collect(),
                mx_host: Vec::new(),
            },
            _ => ReportPolicy {
                policy_type: PolicyType::NoPolicyFound,
                policy_domain: domain.as_str().to_string(),
                policy_strings: Vec::new(),
                mx_host: Vec::new(),
            },
        })
    }
}

impl TlsDecision {
    /// The MTA-STS policy in `testing` mode this decision was made beside: delivery evaluates
    /// what `enforce` would have said and reports it (RFC 8461 section 5, RFC 8460). `None`
    /// when the decision was made by an `enforce` policy or MTA-STS does not apply.
    pub fn sts_testing(&self) -> Option<&StsPolicy> {
        self.sts
            .as_ref()
            .filter(|p| p.mode == StsMode::Testing && self.source != PolicySource::MtaSts)
    }
}

/// Does the destination's MTA-STS policy count (design.md row 4)? Only for a recipient domain
/// without an explicit entry and not on the domain list: those rows are stronger. Nobody looks
/// up `_mta-sts` records for the others.
pub fn wants_sts(rules: Rules<'_>, target: Target<'_>) -> bool {
    match target {
        Target::NextHop(_) => false,
        Target::Domain(domain) => {
            super::resolve(rules.policies, rules.list, domain, false).source
                == PolicySource::Default
        }
    }
}

/// Does the destination's policy read TLSA records? True for a domain without an explicit
/// entry (DANE applies automatically, design.md row 3), with a `dane`/`dane-only` entry, or on
/// the domain list; false for the next hop and for entries that fix another level (as Postfix).
pub fn wants_tlsa(rules: Rules<'_>, target: Target<'_>) -> bool {
    match target {
        Target::NextHop(_) => false,
        Target::Domain(domain) => {
            let base = super::resolve(rules.policies, rules.list, domain, false);
            base.listed
                || base.source == PolicySource::Default
                || matches!(base.level, TlsLevel::Dane | TlsLevel::DaneOnly)
        }
    }
}

/// The base policy of a target before host facts: entry, list, REQUIRETLS, default.
pub fn base_policy(rules: Rules<'_>, target: Target<'_>, demands: Demands) -> ResolvedPolicy {
    match target {
        Target::NextHop(configured) => {
            let raised = demands.requiretls && configured < TlsLevel::Verify;
            ResolvedPolicy {
                level: if raised { TlsLevel::Verify } else { configured },
                source: if raised {
                    PolicySource::RequireTls
                } else {
                    PolicySource::Config
                },
                listed: false,
                match_names: Vec::new(),
            }
        }
        Target::Domain(domain) => {
            super::resolve(rules.policies, rules.list, domain, demands.requiretls)
        }
    }
}

/// The outbound TLS decision for one host (the module doc gives the order). Pure: the same
/// inputs always give the same decision, in delivery and in the tools.
pub fn decide(
    rules: Rules<'_>,
    target: Target<'_>,
    demands: Demands,
    facts: HostFacts<'_>,
) -> TlsDecision {
    let decision = decide_without_sts(rules, target, demands, facts);
    let Some(sts) = facts.sts.filter(|_| wants_sts(rules, target)) else {
        return decision;
    };
    // Usable DANE records come first (row 3; RFC 8461 section 2: MTA-STS must not override
    // DANE), and so does a failed TLSA lookup, which never turns into less than DANE.
    if matches!(
        decision.require,
        Requirement::Dane { .. } | Requirement::Skip { .. }
    ) {
        return decision;
    }
    match sts.mode {
        StsMode::None => decision,
        StsMode::Testing => TlsDecision {
            sts: Some(sts.clone()),
            ..decision
        },
        // RFC 8461 section 4.1: an MX host that matches no pattern is not used; 4.2: the
        // certificate must be valid for the MX host name under PKIX. REQUIRETLS is satisfied
        // by that too (RFC 8689 section 4.2.1).
        StsMode::Enforce => TlsDecision {
            level: TlsLevel::Verify,
            source: PolicySource::MtaSts,
            listed: false,
            require: if sts.matches_mx(facts.host) {
                Requirement::Pkix {
                    names: vec![NamePattern::parse(facts.host)],
                }
            } else {
                Requirement::Skip {
                    reason: format!(
                        "MX host {} matches none of the MTA-STS policy's mx patterns ({})",
                        facts.host,
                        sts.mx.join(", ")
                    ),
                    label: "mta_sts_mx_mismatch",
                }
            },
            sts: Some(sts.clone()),
        },
    }
}

/// Rows 1 to 3, 5 and 6 of the order: everything but MTA-STS.
fn decide_without_sts(
    rules: Rules<'_>,
    target: Target<'_>,
    demands: Demands,
    facts: HostFacts<'_>,
) -> TlsDecision {
    let base = base_policy(rules, target, demands);
    let domain = match target {
        Target::Domain(d) => Some(d),
        Target::NextHop(_) => None,
    };
    let pkix_names = || certificate_names(base.level, facts.host, domain, &base.match_names);
    let by_level = |level: TlsLevel, source: PolicySource| TlsDecision {
        level,
        source,
        listed: base.listed,
        require: plain_requirement(level, pkix_names()),
        sts: None,
    };
    if !wants_tlsa(rules, target) {
        return by_level(base.level, base.source);
    }
    // Without an entry (or list, or REQUIRETLS), the source of a DANE decision is DANE.
    let dane_source = if base.source == PolicySource::Default
        || (base.source == PolicySource::RequireTls && !base.listed)
    {
        PolicySource::Dane
    } else {
        base.source
    };
    // RFC 7672 section 2.2.1: TLSA records count only below a secure MX RRset.
    let not_signed = TlsaFacts::NotLooked("the MX records are not DNSSEC-signed".into());
    let tlsa_facts = match facts.mx_security {
        Security::Secure => facts.tlsa,
        Security::Insecure => &not_signed,
    };
    let published = match tlsa_facts {
        TlsaFacts::Failed { reason, bogus } => {
            // The records would have been read for DANE: the host needed at least that.
            return TlsDecision {
                level: base.level.max(TlsLevel::Dane),
                source: base.source,
                listed: base.listed,
                require: Requirement::Skip {
                    reason: format!("TLSA lookup failed: {reason}"),
                    label: if *bogus {
                        "dnssec_bogus"
                    } else {
                        "tlsa_lookup_failed"
                    },
                },
                sts: None,
            };
        }
        TlsaFacts::Secure(records) if !records.is_empty() => Some(records),
        TlsaFacts::Secure(_) | TlsaFacts::Insecure | TlsaFacts::NotLooked(_) => None,
    };
    let skip = |why: String| TlsDecision {
        level: base.level,
        source: base.source,
        listed: base.listed,
        require: Requirement::Skip {
            reason: format!(
                "dane-only policy but no usable DNSSEC-secure TLSA records for {}{why}",
                facts.host
            ),
            label: "dane_required",
        },
        sts: None,
    };
    let Some(records) = published else {
        if base.level == TlsLevel::DaneOnly {
            return skip(match tlsa_facts {
                TlsaFacts::NotLooked(why) => format!(" ({why})"),
                TlsaFacts::Insecure => " (the TLSA answer is not DNSSEC-signed)".into(),
                _ => String::new(),
            });
        }
        // `dane` without records is `may` (Postfix); everything else keeps its level.
        let level = match base.level {
            TlsLevel::Dane => TlsLevel::May,
            other => other,
        };
        return by_level(level, base.source);
    };
    let tlsa: Vec<Tlsa> = records.iter().filter(|r| usable(r)).cloned().collect();
    if tlsa.is_empty() {
        // Records published, none usable (RFC 7672 section 2.2): encrypted, unauthenticated
        // for the opportunistic levels; mandatory levels keep their own checks.
        return match base.level {
            TlsLevel::DaneOnly => skip(" (only unusable records are published)".into()),
            TlsLevel::None | TlsLevel::May | TlsLevel::Dane => TlsDecision {
                level: TlsLevel::Encrypt,
                source: dane_source,
                listed: base.listed,
                require: Requirement::Encrypted,
                sts: None,
            },
            other => by_level(other, base.source),
        };
    }
    // Usable records: DANE authenticates the peer (RFC 7672 section 3.1). A listed domain
    // (or an entry stricter than DANE) also keeps its PKIX checks (T2, T9); REQUIRETLS alone
    // is satisfied by DANE (RFC 8689 section 4.2.1).
    let strict = base.listed || (base.level >= TlsLevel::Verify && !base.requiretls_only());
    TlsDecision {
        level: if strict { base.level } else { TlsLevel::Dane },
        source: dane_source,
        listed: base.listed,
        require: Requirement::Dane {
            tlsa,
            names: if strict {
                pkix_names()
            } else {
                dane_names(facts.host, facts.expanded, domain, &base.match_names)
            },
            pkix: strict,
            server_name: facts.tlsa_base.to_string(),
        },
        sts: None,
    }
}

impl ResolvedPolicy {
    /// True when the level is mandatory only because of REQUIRETLS (DANE then satisfies it,
    /// RFC 8689 section 4.2.1).
    fn requiretls_only(&self) -> bool {
        self.source == PolicySource::RequireTls && !self.listed
    }
}

/// The requirement of a level without DANE facts.
fn plain_requirement(level: TlsLevel, names: Vec<NamePattern>) -> Requirement {
    match level {
        TlsLevel::None => Requirement::Plaintext,
        // `dane` without usable TLSA records is opportunistic (Postfix's `dane`).
        TlsLevel::May | TlsLevel::Dane => Requirement::Opportunistic,
        TlsLevel::Encrypt => Requirement::Encrypted,
        TlsLevel::DaneOnly | TlsLevel::Verify | TlsLevel::Secure => Requirement::Pkix { names },
    }
}

/// RFC 7672 section 3.2.2: the reference identifiers for a DANE-TA match are the MX host
/// name, its securely CNAME-expanded name when it is an alias (section 2.2.3: both are TLSA
/// base domain candidates), and the recipient domain (plus the entry's `match` names).
fn dane_names(
    host: &str,
    expanded: Option<&str>,
    domain: Option<&Domain>,
    match_names: &[String],
) -> Vec<NamePattern> {
    let mut names = vec![NamePattern::parse(host)];
    for name in expanded.into_iter().chain(domain.map(Domain::as_str)) {
        let pattern = NamePattern::parse(name);
        if !names.contains(&pattern) {
            names.push(pattern);
        }
    }
    names.extend(match_names.iter().map(|m| NamePattern::parse(m)));
    names
}

/// RFC 7672 section 3.1.3: only DANE-TA(2) and DANE-EE(3) are usable for SMTP, with a known
/// selector (0 certificate, 1 SPKI) and matching type (0 exact, 1 SHA-256, 2 SHA-512) whose
/// data can match: a digest of the right length, or for an exact match the DER of a whole
/// certificate or SubjectPublicKeyInfo. A record that cannot match is as useless as one with an
/// unknown parameter (section 2.2: none usable means unauthenticated TLS, not a failure).
pub fn usable(record: &Tlsa) -> bool {
    if !matches!(record.usage, 2 | 3) {
        return false;
    }
    match (record.selector, record.matching) {
        (0 | 1, 1) => record.data.len() == 32,
        (0 | 1, 2) => record.data.len() == 64,
        (0, 0) => matches!(
            x509_parser::parse_x509_certificate(&record.data),
            Ok((rest, _)) if rest.is_empty()
        ),
        (1, 0) => {
            use x509_parser::prelude::FromDer;
            matches!(
                x509_parser::x509::SubjectPublicKeyInfo::from_der(&record.data),
                Ok((rest, _)) if rest.is_empty()
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyTarget;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn entry(target: &str, tls: TlsLevel) -> PolicyEntry {
        PolicyEntry {
            target: PolicyTarget::Exact(d(target)),
            tls,
            match_names: Vec::new(),
        }
    }

    fn tlsa(usage: u8, selector: u8, matching: u8) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![7; if matching == 2 { 64 } else { 32 }],
        }
    }

    const SECURE: Security = Security::Secure;

    /// Decides for host `mx.<domain>` with the given TLSA facts.
    fn run(
        policies: &[PolicyEntry],
        list: &DomainList,
        domain: &str,
        requiretls: bool,
        tlsa: TlsaFacts,
    ) -> TlsDecision {
        let domain = d(domain);
        let host = format!("mx.{domain}");
        decide(
            Rules { policies, list },
            Target::Domain(&domain),
            Demands { requiretls },
            HostFacts {
                host: &host,
                expanded: None,
                tlsa_base: &host,
                mx_security: SECURE,
                tlsa: &tlsa,
                sts: None,
            },
        )
    }

    fn summary(decision: &TlsDecision) -> (TlsLevel, &'static str, &'static str) {
        let require = match &decision.require {
            Requirement::Plaintext => "plaintext",
            Requirement::Opportunistic => "opportunistic",
            Requirement::Encrypted => "encrypted",
            Requirement::Pkix { .. } => "pkix",
            Requirement::Dane { pkix: false, .. } => "dane",
            Requirement::Dane { pkix: true, .. } => "dane+pkix",
            Requirement::Skip { .. } => "skip",
        };
        (decision.level, decision.source.label(), require)
    }

    fn no_tlsa() -> TlsaFacts {
        TlsaFacts::Secure(Vec::new())
    }

    /// design.md row 1: an explicit entry fixes the level; levels other than `dane` and
    /// `dane-only` do not read TLSA records (as Postfix).
    #[test]
    fn row_1_explicit_entries() {
        let none = DomainList::default();
        let policies = [
            entry("plain.no", TlsLevel::None),
            entry("may.no", TlsLevel::May),
            entry("enc.no", TlsLevel::Encrypt),
            entry("ver.no", TlsLevel::Verify),
            entry("sec.no", TlsLevel::Secure),
            entry("dane.no", TlsLevel::Dane),
            entry("daneonly.no", TlsLevel::DaneOnly),
        ];
        let ee = || TlsaFacts::Secure(vec![tlsa(3, 1, 1)]);
        let r = |domain, facts| summary(&run(&policies, &none, domain, false, facts));
        assert_eq!(r("plain.no", ee()), (TlsLevel::None, "config", "plaintext"));
        assert_eq!(
            r("may.no", ee()),
            (TlsLevel::May, "config", "opportunistic")
        );
        assert_eq!(
            r("enc.no", ee()),
            (TlsLevel::Encrypt, "config", "encrypted")
        );
        assert_eq!(r("ver.no", ee()), (TlsLevel::Verify, "config", "pkix"));
        assert_eq!(r("sec.no", ee()), (TlsLevel::Secure, "config", "pkix"));
        // `dane`: DANE when usable, else `may`; unusable only → encrypted (RFC 7672 2.2).
        assert_eq!(r("dane.no", ee()), (TlsLevel::Dane, "config", "dane"));
        assert_eq!(
            r("dane.no", no_tlsa()),
            (TlsLevel::May, "config", "opportunistic")
        );
        assert_eq!(
            r("dane.no", TlsaFacts::Insecure),
            (TlsLevel::May, "config", "opportunistic")
        );
        assert_eq!(
            r("dane.no", TlsaFacts::Secure(vec![tlsa(1, 1, 1)])),
            (TlsLevel::Encrypt, "config", "encrypted")
        );
        // `dane-only`: DANE or nothing.
        assert_eq!(r("daneonly.no", ee()), (TlsLevel::Dane, "config", "dane"));
        let skipped = run(&policies, &none, "daneonly.no", false, no_tlsa());
        assert_eq!(summary(&skipped).2, "skip");
        let Requirement::Skip { reason, label } = &skipped.require else {
            unreachable!()
        };
        assert_eq!(*label, "dane_required");
        assert_eq!(
            reason,
            "dane-only policy but no usable DNSSEC-secure TLSA records for mx.daneonly.no"
        );
        let insecure = run(
            &policies,
            &none,
            "daneonly.no",
            false,
            TlsaFacts::NotLooked("the MX records are not DNSSEC-signed".into()),
        );
        assert_eq!(
            insecure.require,
            Requirement::Skip {
                reason: "dane-only policy but no usable DNSSEC-secure TLSA records for \
                         mx.daneonly.no (the MX records are not DNSSEC-signed)"
                    .into(),
                label: "dane_required"
            }
        );
        // A lookup failure never turns into plaintext.
        assert_eq!(
            run(
                &policies,
                &none,
                "dane.no",
                false,
                TlsaFacts::Failed {
                    reason: "SERVFAIL".into(),
                    bogus: false
                }
            )
            .require,
            Requirement::Skip {
                reason: "TLSA lookup failed: SERVFAIL".into(),
                label: "tlsa_lookup_failed"
            }
        );
    }

    /// Row 2: a listed domain is at least `verify`; with usable TLSA it needs DANE *and* PKIX
    /// (T2, T9), never less; unusable TLSA leave `verify` as it is.
    #[test]
    fn row_2_listed_domains() {
        let list = DomainList::parse("bits.no\nfno.no\n").unwrap();
        let policies = [entry("fno.no", TlsLevel::Secure)];
        let r = |domain, facts| summary(&run(&policies, &list, domain, false, facts));
        assert_eq!(r("bits.no", no_tlsa()), (TlsLevel::Verify, "list", "pkix"));
        assert_eq!(
            r("bits.no", TlsaFacts::Secure(vec![tlsa(2, 0, 1)])),
            (TlsLevel::Verify, "list", "dane+pkix")
        );
        assert_eq!(
            r("bits.no", TlsaFacts::Secure(vec![tlsa(0, 0, 1)])),
            (TlsLevel::Verify, "list", "pkix")
        );
        assert_eq!(
            r("bits.no", TlsaFacts::Insecure),
            (TlsLevel::Verify, "list", "pkix")
        );
        // Stricter by entry: `secure` stays, and the entry is the source.
        assert_eq!(
            r("fno.no", TlsaFacts::Secure(vec![tlsa(3, 1, 1)])),
            (TlsLevel::Secure, "config", "dane+pkix")
        );
        assert_eq!(
            run(
                &policies,
                &list,
                "bits.no",
                false,
                TlsaFacts::Failed {
                    reason: "DNSSEC bogus: expired RRSIG".into(),
                    bogus: true
                }
            )
            .require,
            Requirement::Skip {
                reason: "TLSA lookup failed: DNSSEC bogus: expired RRSIG".into(),
                label: "dnssec_bogus"
            }
        );
        // The PKIX names of a listed domain are verify's: the MX host name (T9).
        let decision = run(
            &policies,
            &list,
            "bits.no",
            false,
            TlsaFacts::Secure(vec![tlsa(3, 1, 1)]),
        );
        let Requirement::Dane { names, .. } = decision.require else {
            unreachable!()
        };
        assert_eq!(names, vec![NamePattern::parse("mx.bits.no")]);
    }

    /// Row 3: DANE applies automatically to a domain without entry (RFC 7672 2.2).
    #[test]
    fn row_3_dane_without_an_entry() {
        let none = DomainList::default();
        let r = |facts| summary(&run(&[], &none, "signed.example", false, facts));
        assert_eq!(
            r(TlsaFacts::Secure(vec![tlsa(3, 1, 1), tlsa(1, 1, 1)])),
            (TlsLevel::Dane, "dane", "dane")
        );
        assert_eq!(
            r(TlsaFacts::Secure(vec![tlsa(0, 0, 1)])),
            (TlsLevel::Encrypt, "dane", "encrypted")
        );
        let decision = run(
            &[],
            &none,
            "signed.example",
            false,
            TlsaFacts::Secure(vec![tlsa(3, 1, 1), tlsa(1, 1, 1)]),
        );
        let Requirement::Dane {
            tlsa: kept, names, ..
        } = decision.require
        else {
            unreachable!()
        };
        // RFC 7672 2.2.1: below an insecure MX RRset the TLSA records do not count.
        let facts = TlsaFacts::Secure(vec![tlsa(3, 1, 1)]);
        let unsigned_mx = decide(
            Rules {
                policies: &[],
                list: &none,
            },
            Target::Domain(&d("signed.example")),
            Demands::default(),
            HostFacts {
                host: "mx.signed.example",
                expanded: None,
                tlsa_base: "mx.signed.example",
                mx_security: Security::Insecure,
                tlsa: &facts,
                sts: None,
            },
        );
        assert_eq!(
            summary(&unsigned_mx),
            (TlsLevel::May, "opportunistic", "opportunistic")
        );
        // Unusable records are dropped; DANE-TA names: MX host and domain (3.2.2).
        assert_eq!(kept, vec![tlsa(3, 1, 1)]);
        assert_eq!(
            names,
            vec![
                NamePattern::parse("mx.signed.example"),
                NamePattern::parse("signed.example")
            ]
        );
    }

    /// Rows 5 and 6: REQUIRETLS raises to `verify`, DANE satisfies it; otherwise `may`.
    #[test]
    fn rows_5_and_6_requiretls_and_default() {
        let none = DomainList::default();
        let r = |requiretls, facts| summary(&run(&[], &none, "x.example", requiretls, facts));
        assert_eq!(r(true, no_tlsa()), (TlsLevel::Verify, "requiretls", "pkix"));
        assert_eq!(
            r(true, TlsaFacts::Secure(vec![tlsa(3, 1, 1)])),
            (TlsLevel::Dane, "dane", "dane")
        );
        assert_eq!(
            r(false, no_tlsa()),
            (TlsLevel::May, "opportunistic", "opportunistic")
        );
        assert_eq!(
            r(false, TlsaFacts::NotLooked("DNSSEC is off".into())),
            (TlsLevel::May, "opportunistic", "opportunistic")
        );
    }

    /// The next hop has its configured level; REQUIRETLS raises it; no DANE.
    #[test]
    fn next_hop() {
        let none = DomainList::default();
        let rules = Rules {
            policies: &[],
            list: &none,
        };
        let facts = TlsaFacts::Secure(vec![tlsa(3, 1, 1)]);
        let host = HostFacts {
            host: "127.0.0.9",
            expanded: None,
            tlsa_base: "127.0.0.9",
            mx_security: Security::Insecure,
            tlsa: &facts,
            sts: None,
        };
        let hop = |level, requiretls| {
            summary(&decide(
                rules,
                Target::NextHop(level),
                Demands { requiretls },
                host,
            ))
        };
        assert_eq!(
            hop(TlsLevel::May, false),
            (TlsLevel::May, "config", "opportunistic")
        );
        assert_eq!(
            hop(TlsLevel::May, true),
            (TlsLevel::Verify, "requiretls", "pkix")
        );
        assert_eq!(
            hop(TlsLevel::Secure, true),
            (TlsLevel::Secure, "config", "pkix")
        );
        assert!(!wants_tlsa(rules, Target::NextHop(TlsLevel::Verify)));
    }

    /// RFC 7672 section 2.2.3, 3.2.2 and 8.1: for an MX host that is a secure alias, the
    /// expanded name is a DANE-TA reference identifier beside the MX host name and the domain,
    /// and the TLSA base domain the records were found at is the SNI. A listed domain's PKIX
    /// names stay the MX host's (T3).
    #[test]
    fn cname_expanded_host_names_and_sni() {
        let none = DomainList::default();
        let domain = d("partner.example");
        let facts = TlsaFacts::Secure(vec![tlsa(2, 0, 1)]);
        let decide_at = |list: &DomainList, expanded: Option<&str>, base: &str| {
            decide(
                Rules {
                    policies: &[],
                    list,
                },
                Target::Domain(&domain),
                Demands::default(),
                HostFacts {
                    host: "mx1.partner.example",
                    expanded,
                    tlsa_base: base,
                    mx_security: SECURE,
                    tlsa: &facts,
                    sts: None,
                },
            )
            .require
        };
        let Requirement::Dane {
            names, server_name, ..
        } = decide_at(&none, Some("real.hosting.example"), "real.hosting.example")
        else {
            unreachable!()
        };
        assert_eq!(
            names,
            vec![
                NamePattern::parse("mx1.partner.example"),
                NamePattern::parse("real.hosting.example"),
                NamePattern::parse("partner.example"),
            ]
        );
        assert_eq!(server_name, "real.hosting.example");
        // Records found at the original name: that is the SNI; the expanded name still counts.
        let Requirement::Dane {
            names, server_name, ..
        } = decide_at(&none, Some("real.hosting.example"), "mx1.partner.example")
        else {
            unreachable!()
        };
        assert!(names.contains(&NamePattern::parse("real.hosting.example")));
        assert_eq!(server_name, "mx1.partner.example");
        // An insecure expansion is no name of the host.
        let Requirement::Dane { names, .. } = decide_at(&none, None, "mx1.partner.example") else {
            unreachable!()
        };
        assert!(!names.contains(&NamePattern::parse("real.hosting.example")));
        // A listed domain keeps its PKIX names: the MX host name, not the alias target.
        let listed = DomainList::parse("partner.example\n").unwrap();
        let Requirement::Dane {
            names,
            pkix: true,
            server_name,
            ..
        } = decide_at(
            &listed,
            Some("real.hosting.example"),
            "real.hosting.example",
        )
        else {
            unreachable!()
        };
        assert!(!names.contains(&NamePattern::parse("real.hosting.example")));
        assert_eq!(server_name, "real.hosting.example");
    }

    fn sts(mode: &str) -> StsPolicy {
        StsPolicy::parse(&format!(
            "version: STSv1\nmode: {mode}\nmx: *.sts.example\nmax_age: 86400\n"
        ))
        .unwrap()
    }

    /// Decides for `host` of `sts.example` under an MTA-STS policy.
    fn run_sts(
        policies: &[PolicyEntry],
        list: &DomainList,
        host: &str,
        requiretls: bool,
        tlsa: TlsaFacts,
        policy: &StsPolicy,
    ) -> TlsDecision {
        decide(
            Rules { policies, list },
            Target::Domain(&d("sts.example")),
            Demands { requiretls },
            HostFacts {
                host,
                expanded: None,
                tlsa_base: host,
                mx_security: SECURE,
                tlsa: &tlsa,
                sts: Some(policy),
            },
        )
    }

    /// Row 4 (RFC 8461 sections 4.1, 4.2 and 5): `enforce` is `verify` with the MX host name
    /// for a matching MX host and a skip for one that matches no pattern; `testing` changes
    /// nothing but rides along for reports; entries, the list and usable DANE come first.
    #[test]
    fn row_4_mta_sts() {
        let none = DomainList::default();
        let enforce = sts("enforce");
        let decision = run_sts(&[], &none, "mx1.sts.example", false, no_tlsa(), &enforce);
        assert_eq!(summary(&decision), (TlsLevel::Verify, "mta-sts", "pkix"));
        assert_eq!(
            decision.require,
            Requirement::Pkix {
                names: vec![NamePattern::parse("mx1.sts.example")]
            }
        );
        assert_eq!(decision.sts.as_ref(), Some(&enforce));
        assert!(decision.sts_testing().is_none());
        // RFC 8461 4.1: an MX host outside the patterns is not used.
        let other = run_sts(
            &[],
            &none,
            "mx.elsewhere.example",
            false,
            no_tlsa(),
            &enforce,
        );
        assert_eq!(
            other.require,
            Requirement::Skip {
                reason: "MX host mx.elsewhere.example matches none of the MTA-STS policy's \
                         mx patterns (*.sts.example)"
                    .into(),
                label: "mta_sts_mx_mismatch"
            }
        );
        // Unusable TLSA records (encrypt) or unsigned MX: MTA-STS still verifies.
        let unusable = TlsaFacts::Secure(vec![tlsa(1, 1, 1)]);
        assert_eq!(
            summary(&run_sts(
                &[],
                &none,
                "mx1.sts.example",
                false,
                unusable,
                &enforce
            )),
            (TlsLevel::Verify, "mta-sts", "pkix")
        );
        // REQUIRETLS and MTA-STS: verify, by MTA-STS (RFC 8689 4.2.1 is satisfied by it).
        assert_eq!(
            summary(&run_sts(
                &[],
                &none,
                "mx1.sts.example",
                true,
                no_tlsa(),
                &enforce
            )),
            (TlsLevel::Verify, "mta-sts", "pkix")
        );
        // Usable DANE records win (row 3; RFC 8461 section 2), and so does a failed lookup.
        let dane = run_sts(
            &[],
            &none,
            "mx1.sts.example",
            false,
            TlsaFacts::Secure(vec![tlsa(3, 1, 1)]),
            &enforce,
        );
        assert_eq!(summary(&dane), (TlsLevel::Dane, "dane", "dane"));
        assert!(dane.sts.is_none());
        let failed = TlsaFacts::Failed {
            reason: "SERVFAIL".into(),
            bogus: false,
        };
        assert_eq!(
            summary(&run_sts(
                &[],
                &none,
                "mx1.sts.example",
                false,
                failed,
                &enforce
            ))
            .2,
            "skip"
        );
        // An entry or the list is stronger: MTA-STS is not even consulted.
        let entry = [entry("sts.example", TlsLevel::May)];
        let by_entry = run_sts(&entry, &none, "mx.other", false, no_tlsa(), &enforce);
        assert_eq!(
            summary(&by_entry),
            (TlsLevel::May, "config", "opportunistic")
        );
        assert!(by_entry.sts.is_none());
        let list = DomainList::parse("sts.example\n").unwrap();
        assert_eq!(
            summary(&run_sts(&[], &list, "mx.other", false, no_tlsa(), &enforce)),
            (TlsLevel::Verify, "list", "pkix")
        );
        // Testing: the decision of the other rows, the policy beside it for the report.
        let testing = sts("testing");
        let decision = run_sts(&[], &none, "mx.other", false, no_tlsa(), &testing);
        assert_eq!(
            summary(&decision),
            (TlsLevel::May, "opportunistic", "opportunistic")
        );
        assert_eq!(decision.sts_testing(), Some(&testing));
        // None: as without a policy.
        let withdrawn = run_sts(
            &[],
            &none,
            "mx1.sts.example",
            false,
            no_tlsa(),
            &sts("none"),
        );
        assert_eq!(
            summary(&withdrawn),
            (TlsLevel::May, "opportunistic", "opportunistic")
        );
        assert!(withdrawn.sts.is_none());
    }

    /// RFC 8460 section 4.4: an MTA-STS decision (enforce or testing) reports `sts` for the
    /// recipient domain with the policy's lines and mx patterns.
    #[test]
    fn report_policy_of_mta_sts_decisions() {
        let none = DomainList::default();
        let domain = d("sts.example");
        for mode in ["enforce", "testing"] {
            let policy = sts(mode);
            let decision = run_sts(&[], &none, "mx1.sts.example", false, no_tlsa(), &policy);
            let report = decision.report_policy(Some(&domain)).unwrap();
            assert_eq!(report.policy_type, PolicyType::Sts);
            assert_eq!(report.policy_domain, "sts.example");
            assert_eq!(
                report.policy_strings,
                vec![
                    "version: STSv1".to_string(),
                    format!("mode: {mode}"),
                    "mx: *.sts.example".into(),
                    "max_age: 86400".into()
                ]
            );
            assert_eq!(report.mx_host, vec!["*.sts.example".to_string()]);
        }
        let plain = run(&[], &none, "sts.example", false, no_tlsa());
        assert_eq!(
            plain.report_policy(Some(&domain)).unwrap().policy_type,
            PolicyType::NoPolicyFound
        );
    }

    #[test]
    fn usable_records_per_rfc_7672_3_1_3() {
        assert!(usable(&tlsa(3, 1, 1)));
        assert!(usable(&tlsa(2, 0, 2)));
        assert!(!usable(&tlsa(0, 0, 1)));
        assert!(!usable(&tlsa(1, 1, 1)));
        assert!(!usable(&tlsa(3, 2, 1)));
        assert!(!usable(&tlsa(3, 1, 3)));
        let short = Tlsa {
            data: vec![1; 20],
            ..tlsa(3, 1, 1)
        };
        assert!(!usable(&short));
    }
}
