//! Certificate validation for mandatory TLS (`verify`, `secure`; T2, T3, T9).
//!
//! The chain, the validity period and the name check are all done by webpki (through rustls'
//! [`WebPkiServerVerifier`]); what this module adds is *which* name is checked. rustls checks
//! one name, the one the connection was opened for, but a policy can accept several:
//!
//! * `verify`: the MX host name (T9), plus the policy's `match` names;
//! * `secure`: the recipient domain or any subdomain of it (Postfix's "nexthop, dot-nexthop"),
//!   plus the policy's `match` names, so a hosted MX whose certificate names the provider can
//!   be accepted only when the administrator says so.
//!
//! The certificate's subjectAltName DNS names are read only to pick a candidate that the policy
//! allows; the candidate is then verified by webpki itself, wildcard rules included. A host
//! written as an IP address (`inbound.next_hop = "[192.0.2.7]:25"`) is checked against the
//! certificate's iPAddress subjectAltNames instead (RFC 5280 4.2.1.6), again by webpki.
//!
//! Two things webpki does not do are added here (issue 12 item 4): the chain the server
//! presented is kept in a [`PresentedChain`] so that a failure report can still show it
//! (`probe`, `domains check`, T7), and "expired" / "not yet valid" name the certificate at
//! fault when it is an intermediate rather than the server's own.

use super::client::TlsFailure;
use crate::policy::NamePattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The certificates a server presented in the handshake of one connection (end entity first),
/// filled in by the verifier whether or not they are accepted, so that a report can describe
/// them after a failed handshake too. Clones share the slot.
/// The DANE verifier also notes which TLSA record matched.
#[derive(Debug, Clone, Default)]
pub struct PresentedChain(Arc<Mutex<Presented>>);

#[derive(Debug, Default)]
struct Presented {
    chain: Vec<CertificateDer<'static>>,
    tlsa_match: Option<String>,
}

impl PresentedChain {
    /// Keeps `end_entity` and `intermediates`, replacing what an earlier handshake left.
    pub fn record(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        // A poisoned slot only means another thread panicked while writing a Vec: the data is
        // still a chain, so it is taken over rather than lost.
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.chain = chain;
        slot.tlsa_match = None;
    }

    /// The chain recorded last (empty when the server presented none).
    pub fn get(&self) -> Vec<CertificateDer<'static>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chain
            .clone()
    }

    /// Notes the TLSA record that authenticated the chain recorded last (DANE, RFC 7672).
    pub fn record_tlsa_match(&self, record: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).tlsa_match = Some(record);
    }

    /// The TLSA record that authenticated the chain recorded last, as `3 1 1 <hex>`.
    pub fn tlsa_match(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tlsa_match
            .clone()
    }
}

/// When webpki says a chain is expired or not yet valid, it does not say which certificate is.
/// If the server's own certificate is valid at `now` but an intermediate is not, that
/// intermediate is named (subject and date), so an administrator knows what to replace.
pub fn intermediate_time_fault(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Option<TlsFailure> {
    let now = i64::try_from(now.as_secs()).ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(end_entity.as_ref()).ok()?;
    let valid = |c: &x509_parser::certificate::X509Certificate<'_>| {
        c.validity().not_before.timestamp() <= now && now <= c.validity().not_after.timestamp()
    };
    if !valid(&leaf) {
        return None;
    }
    for der in intermediates {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            continue;
        };
        let subject = cert.subject().to_string();
        let date = |t: x509_parser::time::ASN1Time| t.to_rfc2822().unwrap_or_else(|e| e);
        if cert.validity().not_after.timestamp() < now {
            return Some(TlsFailure::IntermediateExpired {
                subject,
                not_after: date(cert.validity().not_after),
            });
        }
        if cert.validity().not_before.timestamp() > now {
            return Some(TlsFailure::IntermediateNotYetValid {
                subject,
                not_before: date(cert.validity().not_before),
            });
        }
    }
    None
}

/// Replaces webpki's "expired" / "not yet valid" by the precise [`TlsFailure`] when an
/// intermediate is at fault; it travels inside rustls' error as [`CertificateError::Other`] and
/// is taken out again by [`TlsFailure::from_handshake_error`].
pub fn name_time_fault(
    error: rustls::Error,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> rustls::Error {
    let time_error = matches!(
        &error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    );
    if !time_error {
        return error;
    }
    match intermediate_time_fault(end_entity, intermediates, now) {
        Some(failure) => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
            Arc::new(failure),
        ))),
        None => error,
    }
}

/// The names accepted on one connection, in the words used in error messages.
pub fn describe(patterns: &[NamePattern]) -> String {
    let names: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    names.join(" or ")
}

/// A certificate name that some pattern allows, as a name webpki can check: a plain SAN as it
/// is; for a wildcard SAN (`*.example.no`), the name it would stand for that a pattern allows.
/// Also used by `tls::dane` for DANE-TA(2) names, so both checks read names alike.
pub(super) fn candidate(san: &str, patterns: &[NamePattern], sni_host: &str) -> Option<String> {
    let san = san.trim_end_matches('.').to_ascii_lowercase();
    match san.strip_prefix("*.") {
        None => patterns.iter().any(|p| p.allows(&san)).then_some(san),
        Some(base) => {
            // The wildcard covers exactly one label under `base`.
            let covers = |name: &str| {
                name.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == base)
            };
            for p in patterns {
                match p {
                    NamePattern::Exact(n) if covers(n) => return Some(n.clone()),
                    NamePattern::Subdomains(parent) => {
                        // `*.x` is allowed when every name it covers is below `parent`.
                        let below =
                            base == parent.as_str() || base.ends_with(&format!(".{parent}"));
                        if below {
                            // Prefer the host we connected to when the wildcard covers it.
                            if covers(sni_host) {
                                return Some(sni_host.to_string());
                            }
                            return Some(format!("mail.{base}"));
                        }
                    }
                    _ => {}
                }
            }
            None
        }
    }
}

/// The handshake signature of TLS 1.2 (the server's key exchange), checked with `provider`'s
/// algorithms: what every verifier checks, also one that does not authenticate the peer, so
/// that the session is bound to the key in the certificate presented.
pub fn tls12_signature(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The TLS 1.3 CertificateVerify signature, as [`tls12_signature`].
pub fn tls13_signature(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The signature schemes `provider` can check.
pub fn signature_schemes(
    provider: &rustls::crypto::CryptoProvider,
) -> Vec<rustls::SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// Validates the chain with webpki and the name against the connection's patterns.
#[derive(Debug)]
pub struct PolicyVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    patterns: Vec<NamePattern>,
    /// Where the presented chain is kept for reports (a fresh slot nobody reads by default).
    presented: PresentedChain,
}

impl PolicyVerifier {
    /// A verifier that accepts a chain `webpki` accepts whose certificate names match one of
    /// `patterns` (T9).
    pub fn new(webpki: Arc<WebPkiServerVerifier>, patterns: Vec<NamePattern>) -> PolicyVerifier {
        PolicyVerifier {
            webpki,
            patterns,
            presented: PresentedChain::default(),
        }
    }

    /// Keeps every chain presented to this verifier in `slot`.
    pub fn recording(mut self, slot: PresentedChain) -> PolicyVerifier {
        self.presented = slot;
        self
    }

    /// Is `ip` (the address connected to, as the host was written as an address) one the
    /// policy names exactly? Then its iPAddress subjectAltName is what must match.
    fn allows_address(&self, ip: IpAddr) -> bool {
        self.patterns.iter().any(|p| match p {
            NamePattern::Exact(text) => text.parse::<IpAddr>() == Ok(ip),
            NamePattern::Subdomains(_) => false,
        })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // RFC 5280 4.2.1.6: a host written as an IP address is identified by an iPAddress
        // subjectAltName equal to the address connected to; webpki compares them octet by
        // octet (and never accepts a dNSName for an address).
        if let ServerName::IpAddress(ip) = server_name {
            if self.allows_address(IpAddr::from(*ip)) {
                return self.webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                );
            }
        }
        let sni_host = match server_name {
            ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
            _ => String::new(),
        };
        let parsed = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let candidates: Vec<String> = parsed
            .valid_dns_names()
            .filter_map(|san| candidate(san, &self.patterns, &sni_host))
            .collect();
        if candidates.is_empty() {
            // Still report an untrusted or expired chain as such: that is the more useful
            // message when both are wrong.
            self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        let mut last = None;
        for name in candidates {
            let Ok(dns) = DnsName::try_from(name) else {
                continue;
            };
            let name = ServerName::DnsName(dns);
            match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                &name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        )))
    }
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.presented.record(end_entity, intermediates);
        self.check(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| name_time_fault(e, end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Vec<NamePattern> {
        list.iter().map(|s| NamePattern::parse(s)).collect()
    }

    #[test]
    fn candidates_follow_the_policy() {
        let secure = p(&["partner.no", ".partner.no"]);
        assert_eq!(
            candidate("mx1.partner.no", &secure, "mx1.partner.no").as_deref(),
            Some("mx1.partner.no")
        );
        assert_eq!(candidate("mx.other.no", &secure, "mx.other.no"), None);
        // A wildcard below the domain stands for the host we connected to.
        assert_eq!(
            candidate("*.partner.no", &secure, "mx1.partner.no").as_deref(),
            Some("mx1.partner.no")
        );
        // A wildcard elsewhere is not allowed.
        assert_eq!(candidate("*.other.no", &secure, "mx1.partner.no"), None);
        let verify = p(&["mx1.partner.no"]);
        assert_eq!(
            candidate("*.partner.no", &verify, "mx1.partner.no").as_deref(),
            Some("mx1.partner.no")
        );
        assert_eq!(
            candidate("*.mx1.partner.no", &verify, "mx1.partner.no"),
            None
        );
        assert_eq!(describe(&secure), "partner.no or .partner.no");
    }
}
