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
//! allows; the candidate is then verified by webpki itself, wildcard rules included.

use crate::policy::NamePattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct};
use std::sync::Arc;

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

/// Validates the chain with webpki and the name against the connection's patterns.
#[derive(Debug)]
pub struct PolicyVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    patterns: Vec<NamePattern>,
}

impl PolicyVerifier {
    /// A verifier that accepts a chain `webpki` accepts whose certificate names match one of
    /// `patterns` (T9).
    pub fn new(webpki: Arc<WebPkiServerVerifier>, patterns: Vec<NamePattern>) -> PolicyVerifier {
        PolicyVerifier { webpki, patterns }
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
