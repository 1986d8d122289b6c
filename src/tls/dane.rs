//! DANE for SMTP: authenticating a peer by its DNSSEC-validated TLSA records (D1; RFC 7672,
//! with RFC 7671's updates to RFC 6698).
//!
//! What DANE changes, and why:
//!
//! * **The trust anchor comes from DNS, not from a CA list.** Public roots protect the web, where
//!   the name typed by the user is the reference identity; for MX delivery an attacker who can
//!   rewrite MX answers chooses the name too, so only a DNSSEC-signed TLSA record binds the
//!   *right* key to the MX host (RFC 7672 §1.3).
//! * **DANE-EE(3)** (RFC 7672 §3.1.1, RFC 7671 §5.1): the record pins the server's own
//!   certificate or public key. The key *is* the authentication: there is no name check and no
//!   expiry check (a domain-issued certificate expires when its TLSA record is withdrawn).
//! * **DANE-TA(2)** (RFC 7672 §3.1.2, RFC 7671 §5.2): the record designates a trust anchor, a CA
//!   the domain chose; the server's chain must lead from its leaf to that anchor (signatures,
//!   validity dates, serverAuth purpose), and the leaf must carry one of the reference names
//!   (RFC 7672 §3.2.2: the MX host name, and the next-hop domain). The anchor must be *in* the
//!   chain the server sends (RFC 7672 §3.1.2 requires servers to include it), so it is looked
//!   for among the presented certificates above the leaf.
//! * **PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP** (RFC 7672 §3.1.3): there is no agreed
//!   set of public CAs for MTA-to-MTA mail, so records that depend on one cannot be relied on.
//!   [`usable`] drops them, with records whose parameters are unknown or whose data is
//!   malformed (RFC 6698 §4.1; RFC 7672 §2.2: TLSA present but none usable means mandatory
//!   *unauthenticated* TLS — the caller decides that, this module only authenticates).
//! * Any one usable record that matches is enough (RFC 6698 §4.1; RFC 7671 §5).
//!
//! A domain that is also on the tvungen TLS list gets DANE *and* the PKIX validation its level
//! demands (T2, T9): [`DaneVerifier`] then also runs the ordinary [`PolicyVerifier`], so a
//! listed domain is only ever made stricter by publishing TLSA records.
//!
//! Failures carry a [`DaneError`] inside the rustls error, so that
//! [`TlsFailure::from_handshake_error`](super::client::TlsFailure::from_handshake_error) can turn
//! them into `TlsFailure::DaneMismatch` for the DSN, the log and the `dane_mismatch` metric.

use super::verify::{self, PolicyVerifier, PresentedChain};
use crate::dns::Tlsa;
use crate::policy::NamePattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError};
use sha2::{Digest, Sha256, Sha512};
use std::sync::Arc;

/// Certificate usage DANE-TA(2): the record designates a trust anchor (RFC 7671 §5.2).
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3): the record pins the server's own certificate or key
/// (RFC 7671 §5.1).
pub const DANE_EE: u8 = 3;

/// The records of `records` that can authenticate an SMTP server (RFC 7672 §3.1, RFC 6698
/// §4.1), in their order:
///
/// * usage DANE-TA(2) or DANE-EE(3) only; PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
///   (RFC 7672 §3.1.3), any other usage is unknown;
/// * selector Cert(0) or SPKI(1); matching type Full(0), SHA2-256(1) or SHA2-512(2);
/// * the data must be well formed: a digest of its algorithm's length (32 or 64 bytes), or for
///   Full(0) a DER certificate (selector 0) or SubjectPublicKeyInfo (selector 1) with nothing
///   after it. A record whose data cannot possibly match is as useless as one with an unknown
///   parameter, and treating it as usable would turn a publishing mistake into a hard failure
///   instead of the unauthenticated TLS RFC 7672 §2.2 prescribes for "none usable".
///
/// An empty result for non-empty `records` means: STARTTLS still required, no authentication.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| crate::policy::decision::usable(r))
        .cloned()
        .collect()
}

/// Why a certificate chain failed DANE authentication. Travels inside the rustls error
/// (`CertificateError::Other`) and comes out as `TlsFailure::DaneMismatch`; the `Display` text
/// is what senders read in DSNs and administrators in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneError {
    /// No usable record matched any certificate it may match (RFC 6698 §4.1). Carries the
    /// numbers an administrator compares with the zone: how many records there were, and the
    /// digest that a `3 1 1` record for the presented leaf would hold.
    #[error(
        "no TLSA record matched the certificate ({records} usable TLSA record(s) for \
         {host}; the leaf's SPKI SHA-256 is {leaf_spki_sha256})"
    )]
    NoMatch {
        /// The MX host name the connection was opened for.
        host: String,
        /// How many usable records were tried.
        records: usize,
        /// Hex SHA-256 of the leaf's SubjectPublicKeyInfo, or why it could not be computed.
        leaf_spki_sha256: String,
    },
    /// A DANE-TA(2) record matched a certificate of the chain, but the leaf does not chain to
    /// it validly (signature, validity dates, purpose; RFC 7672 §3.1.2).
    #[error(
        "DANE-TA trust anchor (TLSA {record}) matched, but the chain to it is invalid: {reason}"
    )]
    TrustAnchorChain {
        /// The matching record, abbreviated.
        record: String,
        /// webpki's reason.
        reason: String,
    },
    /// A DANE-TA(2) record matched and the chain is valid, but the leaf carries none of the
    /// reference names (RFC 7672 §3.2.2).
    #[error(
        "DANE-TA trust anchor (TLSA {record}) matched, but the certificate does not match {names}"
    )]
    TrustAnchorName {
        /// The matching record, abbreviated.
        record: String,
        /// The names that were accepted.
        names: String,
    },
}

impl DaneError {
    /// The `DaneError` inside a rustls error, if there is one (how
    /// `TlsFailure::from_handshake_error` recognises a DANE failure).
    pub fn from_rustls(error: &rustls::Error) -> Option<&DaneError> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
            | rustls::Error::Other(other) => other.0.downcast_ref::<DaneError>(),
            _ => None,
        }
    }

    /// As a rustls error: an invalid certificate, so rustls sends the peer a
    /// `certificate_unknown` alert, with this error recoverable by [`DaneError::from_rustls`].
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// Authenticates a server by TLSA records (see the module documentation); with `pkix`, also by
/// the public-root validation a listed domain demands.
#[derive(Debug)]
pub struct DaneVerifier {
    /// The usable records of the MX host's TLSA RRset (only those: see [`usable`]).
    tlsa: Vec<Tlsa>,
    /// The reference names a DANE-TA(2) chain's leaf must carry (RFC 7672 §3.2.2); also the
    /// names the PKIX check uses.
    names: Vec<NamePattern>,
    /// Some for a listed domain: the PKIX chain and name validation of its level (T2, T9),
    /// required in addition to DANE.
    pkix: Option<PolicyVerifier>,
    /// Signature algorithms for the handshake signatures and the DANE-TA chain.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Where the presented chain is kept for reports, also when it is refused.
    presented: PresentedChain,
}

impl DaneVerifier {
    /// A verifier for the TLSA records of one MX host. Unusable records in `tlsa` are dropped
    /// here again (see [`usable`]), so a caller cannot widen what is accepted by passing them.
    /// `pkix`: the public-root verifier, for a domain whose level requires PKIX as well.
    pub fn new(
        tlsa: &[Tlsa],
        names: Vec<NamePattern>,
        pkix: Option<Arc<WebPkiServerVerifier>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> DaneVerifier {
        DaneVerifier {
            tlsa: usable(tlsa),
            pkix: pkix.map(|webpki| PolicyVerifier::new(webpki, names.clone())),
            names,
            provider,
            presented: PresentedChain::default(),
        }
    }

    /// Keeps every chain the server presents in `slot` (for `probe` and `domains check`).
    pub fn recording(mut self, slot: PresentedChain) -> DaneVerifier {
        self.presented = slot;
        self
    }

    /// The record that authenticates the chain, if any (RFC 6698 §4.1: one match is enough).
    fn authenticate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<&Tlsa, DaneError> {
        let leaf_spki = spki(end_entity);
        // DANE-EE(3) first: cheapest, and the common deployment (RFC 7672 §3.1.1).
        let ee_match = self.tlsa.iter().filter(|r| r.usage == DANE_EE).find(|r| {
            selected(r.selector, end_entity, leaf_spki).is_some_and(|data| matches_data(r, data))
        });
        if let Some(record) = ee_match {
            return Ok(record);
        }
        // DANE-TA(2): a certificate above the leaf is the anchor. The leaf itself is never a
        // trust anchor (a self-signed leaf is published as DANE-EE; OpenSSL and Postfix match
        // TA records only at depth >= 1 too), and webpki cannot anchor a chain at its own leaf.
        let mut first_failure = None;
        for record in self.tlsa.iter().filter(|r| r.usage == DANE_TA) {
            for (index, candidate) in intermediates.iter().enumerate() {
                let matched = selected(record.selector, candidate, spki(candidate))
                    .is_some_and(|data| matches_data(record, data));
                if !matched {
                    continue;
                }
                match self.chain_to(record, index, end_entity, intermediates, server_name, now) {
                    Ok(()) => return Ok(record),
                    Err(e) => {
                        first_failure.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| DaneError::NoMatch {
            host: host_of(server_name),
            records: self.tlsa.len(),
            leaf_spki_sha256: leaf_spki
                .map(|s| hex(&Sha256::digest(s)))
                .unwrap_or_else(|| "unknown (the certificate could not be parsed)".into()),
        }))
    }

    /// RFC 7672 §3.1.2, §3.2.2: the leaf must chain to `intermediates[anchor]` (the other
    /// presented certificates may be used on the way) and carry one of the reference names.
    fn chain_to(
        &self,
        record: &Tlsa,
        anchor: usize,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), DaneError> {
        let chain_error = |reason: String| DaneError::TrustAnchorChain {
            record: abbreviated(record),
            reason,
        };
        let ta = webpki::anchor_from_trusted_cert(&intermediates[anchor])
            .map_err(|e| chain_error(format!("trust anchor not usable: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != anchor)
            .map(|(_, c)| c.clone())
            .collect();
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| chain_error(format!("leaf certificate not parsable: {e}")))?;
        leaf.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[ta],
            &others,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| chain_error(describe_webpki(&e)))?;
        // The same candidate names the PKIX check would try, so wildcards follow the same
        // rules (RFC 7672 §3.2.3 allows a wildcard in the left-most label).
        let sni_host = host_of(server_name);
        let named = leaf
            .valid_dns_names()
            .filter_map(|san| verify::candidate(san, &self.names, &sni_host))
            .filter_map(|name| DnsName::try_from(name).ok())
            .any(|dns| {
                leaf.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
                    .is_ok()
            });
        if named {
            Ok(())
        } else {
            Err(DaneError::TrustAnchorName {
                record: abbreviated(record),
                names: verify::describe(&self.names),
            })
        }
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.presented.record(end_entity, intermediates);
        let record = self
            .authenticate(end_entity, intermediates, server_name, now)
            .map_err(DaneError::into_rustls)?;
        self.presented.record_tlsa_match(record.to_string());
        if let Some(pkix) = &self.pkix {
            // A listed domain: DANE does not replace what its level demands (T2, T9).
            pkix.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls12_signature(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        super::verify::signature_schemes(&self.provider)
    }
}

/// The DER SubjectPublicKeyInfo of a certificate (selector SPKI(1)); None if it does not parse.
fn spki<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw)
}

/// What a record with `selector` is compared with (RFC 6698 §2.1.2).
fn selected<'a>(
    selector: u8,
    cert: &'a CertificateDer<'_>,
    spki: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    match selector {
        0 => Some(cert.as_ref()),
        1 => spki,
        _ => None,
    }
}

/// Whether the selected data matches the record under its matching type (RFC 6698 §2.1.3).
fn matches_data(record: &Tlsa, data: &[u8]) -> bool {
    match record.matching {
        0 => record.data == data,
        1 => record.data[..] == Sha256::digest(data)[..],
        2 => record.data[..] == Sha512::digest(data)[..],
        _ => false,
    }
}

/// The host name the connection was opened for (the MX host name, RFC 7672 §8.1).
fn host_of(server_name: &ServerName<'_>) -> String {
    match server_name {
        ServerName::DnsName(d) => d.as_ref().trim_end_matches('.').to_ascii_lowercase(),
        other => other.to_str().into_owned(),
    }
}

/// A record for messages: parameters and the first bytes of the data (a full certificate
/// would not fit in a DSN line).
fn abbreviated(record: &Tlsa) -> String {
    let shown = record.data.len().min(8);
    let more = if record.data.len() > shown { "…" } else { "" };
    format!(
        "{} {} {} {}{more}",
        record.usage,
        record.selector,
        record.matching,
        hex(&record.data[..shown])
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// webpki's chain errors in the words `TlsFailure` uses.
fn describe_webpki(error: &webpki::Error) -> String {
    match error {
        webpki::Error::CertExpired { .. } => "certificate expired".into(),
        webpki::Error::CertNotValidYet { .. } => "certificate not yet valid".into(),
        webpki::Error::UnknownIssuer => "the leaf is not issued under the trust anchor".into(),
        webpki::Error::InvalidSignatureForPublicKey => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    const MX: &str = "mx.partner.test";

    /// A CA → intermediate → leaf chain, plus the keys a test may sign more with.
    struct Pki {
        root: rcgen::Certificate,
        intermediate: rcgen::Certificate,
        intermediate_key: KeyPair,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    impl Pki {
        fn new() -> Pki {
            let root_key = KeyPair::generate().unwrap();
            let root = ca_params("test root").self_signed(&root_key).unwrap();
            let intermediate_key = KeyPair::generate().unwrap();
            let intermediate = ca_params("test intermediate")
                .signed_by(&intermediate_key, &root, &root_key)
                .unwrap();
            Pki {
                root,
                intermediate,
                intermediate_key,
            }
        }

        /// A leaf for `names` under the intermediate; expired if `expired`.
        fn leaf(&self, names: &[&str], expired: bool) -> CertificateDer<'static> {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params
                .signed_by(&key, &self.intermediate, &self.intermediate_key)
                .unwrap();
            cert.der().clone()
        }

        /// The chain a server sends after its leaf: intermediate, then root.
        fn chain(&self) -> Vec<CertificateDer<'static>> {
            vec![self.intermediate.der().clone(), self.root.der().clone()]
        }
    }

    fn self_signed(names: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        cert.der().clone()
    }

    /// The record `usage selector matching` for `cert`, computed independently of `matches`.
    fn record(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        let selected = match selector {
            0 => cert.as_ref().to_vec(),
            _ => spki(cert).unwrap().to_vec(),
        };
        let data = match matching {
            0 => selected,
            1 => Sha256::digest(&selected).to_vec(),
            _ => Sha512::digest(&selected).to_vec(),
        };
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn names(list: &[&str]) -> Vec<NamePattern> {
        list.iter().map(|s| NamePattern::parse(s)).collect()
    }

    fn verifier(tlsa: &[Tlsa], accepted: &[&str]) -> DaneVerifier {
        DaneVerifier::new(tlsa, names(accepted), None, crate::tls::crypto_provider())
    }

    fn check(
        v: &DaneVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(MX).unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
    }

    fn dane_error(result: Result<ServerCertVerified, rustls::Error>) -> DaneError {
        let error = result.expect_err("must fail");
        DaneError::from_rustls(&error)
            .unwrap_or_else(|| panic!("not a DANE error: {error:?}"))
            .clone()
    }

    #[test]
    fn dane_ee_matches_certificate_or_key_by_each_matching_type() {
        // RFC 6698 §2.1.2/§2.1.3: selector 0 the DER certificate, 1 the SPKI; matching 0 exact,
        // 1 SHA-256, 2 SHA-512.
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        for (selector, matching) in [(1, 1), (0, 1), (1, 2), (0, 0), (1, 0), (0, 2)] {
            let v = verifier(&[record(3, selector, matching, &leaf)], &[MX]);
            assert!(
                check(&v, &leaf, &pki.chain()).is_ok(),
                "3 {selector} {matching}"
            );
        }
    }

    #[test]
    fn wrong_digest_is_a_mismatch_naming_the_leaf_key() {
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        let mut r = record(3, 1, 1, &leaf);
        r.data[0] ^= 0xff;
        let e = dane_error(check(&verifier(&[r], &[MX]), &leaf, &pki.chain()));
        let expected_digest = hex(&Sha256::digest(spki(&leaf).unwrap()));
        assert_eq!(
            e,
            DaneError::NoMatch {
                host: MX.into(),
                records: 1,
                leaf_spki_sha256: expected_digest.clone(),
            }
        );
        let text = e.to_string();
        assert!(
            text.starts_with("no TLSA record matched the certificate"),
            "{text}"
        );
        assert!(text.contains("record(s) for mx.partner.test;"), "{text}");
        assert!(text.contains(&expected_digest), "{text}");
    }

    #[test]
    fn dane_ee_checks_neither_expiry_nor_name() {
        // RFC 7672 §3.1.1: with DANE-EE the key is the authentication; an expired certificate
        // for another name is fine.
        let pki = Pki::new();
        let leaf = pki.leaf(&["other.example"], true);
        let v = verifier(&[record(3, 1, 1, &leaf)], &[MX]);
        assert!(check(&v, &leaf, &[]).is_ok());
        // A self-signed leaf too: no chain is built.
        let own = self_signed(&["whatever.invalid"]);
        let v = verifier(&[record(3, 1, 1, &own)], &[MX]);
        assert!(check(&v, &own, &[]).is_ok());
    }

    #[test]
    fn dane_ta_on_the_intermediate_or_root_with_the_right_name() {
        // RFC 7672 §3.1.2, §3.2.2: the anchor is in the chain, the leaf chains to it and names
        // the MX host.
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        let on_intermediate = verifier(&[record(2, 0, 1, pki.intermediate.der())], &[MX]);
        assert!(check(&on_intermediate, &leaf, &pki.chain()).is_ok());
        let on_root = verifier(&[record(2, 0, 1, pki.root.der())], &[MX]);
        assert!(check(&on_root, &leaf, &pki.chain()).is_ok());
        // The chain may come in any order (TLS 1.3 allows it).
        let reversed: Vec<_> = pki.chain().into_iter().rev().collect();
        assert!(check(&on_root, &leaf, &reversed).is_ok());
        let by_key = verifier(&[record(2, 1, 1, pki.root.der())], &[MX]);
        assert!(check(&by_key, &leaf, &pki.chain()).is_ok());
        // The recipient domain's subdomains, as `secure` passes them (RFC 7672 §3.2.2).
        let wild = pki.leaf(&["*.partner.test"], false);
        let domain = verifier(
            &[record(2, 0, 1, pki.root.der())],
            &["partner.test", ".partner.test"],
        );
        assert!(check(&domain, &wild, &pki.chain()).is_ok());
    }

    #[test]
    fn dane_ta_with_a_wrong_name_fails() {
        let pki = Pki::new();
        let leaf = pki.leaf(&["mx.other.test"], false);
        let v = verifier(&[record(2, 0, 1, pki.root.der())], &[MX]);
        let e = dane_error(check(&v, &leaf, &pki.chain()));
        assert!(
            matches!(&e, DaneError::TrustAnchorName { names, .. } if names == MX),
            "{e:?}"
        );
    }

    #[test]
    fn dane_ta_checks_the_validity_of_the_leaf() {
        // Unlike DANE-EE, a DANE-TA chain is validated (RFC 7672 §3.1.2).
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], true);
        let v = verifier(&[record(2, 0, 1, pki.root.der())], &[MX]);
        let e = dane_error(check(&v, &leaf, &pki.chain()));
        assert!(
            matches!(&e, DaneError::TrustAnchorChain { reason, .. } if reason == "certificate expired"),
            "{e:?}"
        );
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_and_above_the_leaf() {
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        // A CA that is not in the presented chain.
        let stranger = Pki::new();
        let v = verifier(&[record(2, 0, 1, stranger.root.der())], &[MX]);
        assert!(matches!(
            dane_error(check(&v, &leaf, &pki.chain())),
            DaneError::NoMatch { .. }
        ));
        // A CA that is presented but did not issue the leaf.
        let mut chain = pki.chain();
        chain.push(stranger.root.der().clone());
        let e = dane_error(check(&v, &leaf, &chain));
        assert!(matches!(e, DaneError::TrustAnchorChain { .. }), "{e:?}");
        // The leaf itself is not a trust anchor: a DANE-TA record for it does not match.
        let v = verifier(&[record(2, 0, 1, &leaf)], &[MX]);
        assert!(matches!(
            dane_error(check(&v, &leaf, &pki.chain())),
            DaneError::NoMatch { .. }
        ));
        // Only the intermediate presented, the root record cannot be found.
        let v = verifier(&[record(2, 0, 1, pki.root.der())], &[MX]);
        let only_intermediate = [pki.intermediate.der().clone()];
        assert!(matches!(
            dane_error(check(&v, &leaf, &only_intermediate)),
            DaneError::NoMatch { .. }
        ));
    }

    #[test]
    fn any_usable_record_that_matches_is_enough() {
        // RFC 6698 §4.1: one failing record does not spoil another that matches.
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        let stranger = self_signed(&[MX]);
        let v = verifier(&[record(3, 1, 1, &stranger), record(3, 1, 1, &leaf)], &[MX]);
        assert!(check(&v, &leaf, &pki.chain()).is_ok());
    }

    #[test]
    fn pkix_usages_unknown_parameters_and_bad_lengths_are_unusable() {
        // RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP.
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        let good = record(3, 1, 1, &leaf);
        let with = |usage, selector, matching, data: Vec<u8>| Tlsa {
            usage,
            selector,
            matching,
            data,
        };
        let records = vec![
            record(0, 0, 1, pki.root.der()),
            record(1, 1, 1, &leaf),
            with(4, 1, 1, good.data.clone()),
            with(3, 2, 1, good.data.clone()),
            with(3, 1, 3, good.data.clone()),
            // A digest of the wrong length for its matching type.
            with(3, 1, 1, good.data[..31].to_vec()),
            with(3, 1, 2, good.data.clone()),
            // Full data that is no certificate / no key.
            with(3, 0, 0, vec![1, 2, 3]),
            with(2, 1, 0, Vec::new()),
            good.clone(),
        ];
        assert_eq!(usable(&records), vec![good]);
        assert!(usable(&records[..9]).is_empty());
        // An unusable record that would match is not used by the verifier either.
        let v = verifier(&[record(1, 1, 1, &leaf)], &[MX]);
        assert!(matches!(
            dane_error(check(&v, &leaf, &pki.chain())),
            DaneError::NoMatch { records: 0, .. }
        ));
    }

    /// A PKIX verifier trusting `root` only (as `outbound.extra_trust_roots` would).
    fn pkix_with(root: Option<&CertificateDer<'_>>) -> Arc<WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(root) = root {
            roots.add(root.clone().into_owned()).unwrap();
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::crypto_provider())
            .build()
            .unwrap()
    }

    #[test]
    fn a_listed_domain_needs_pkix_as_well() {
        // T2/T9: a listed domain that publishes TLSA is only made stricter: a self-signed leaf
        // that matches 3 1 1 is still not publicly trusted.
        let own = self_signed(&[MX]);
        let v = DaneVerifier::new(
            &[record(3, 1, 1, &own)],
            names(&[MX]),
            Some(pkix_with(None)),
            crate::tls::crypto_provider(),
        );
        let e = check(&v, &own, &[]).expect_err("untrusted");
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
        // With a trusted chain: DANE and the name both count.
        let pki = Pki::new();
        let leaf = pki.leaf(&[MX], false);
        let trusted = Some(pkix_with(Some(pki.root.der())));
        let provider = crate::tls::crypto_provider();
        let ok = DaneVerifier::new(
            &[record(3, 1, 1, &leaf)],
            names(&[MX]),
            trusted.clone(),
            provider.clone(),
        );
        assert!(check(&ok, &leaf, &pki.chain()).is_ok());
        let other = pki.leaf(&["mx.other.test"], false);
        let wrong_name = DaneVerifier::new(
            &[record(3, 1, 1, &other)],
            names(&[MX]),
            trusted.clone(),
            provider.clone(),
        );
        let e = check(&wrong_name, &other, &pki.chain()).expect_err("name");
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{e:?}"
        );
        // DANE still decides first: PKIX-valid but no TLSA match is a DANE failure.
        let stranger = self_signed(&[MX]);
        let mismatch = DaneVerifier::new(
            &[record(3, 1, 1, &stranger)],
            names(&[MX]),
            trusted,
            provider,
        );
        assert!(matches!(
            dane_error(check(&mismatch, &leaf, &pki.chain())),
            DaneError::NoMatch { .. }
        ));
    }
}
