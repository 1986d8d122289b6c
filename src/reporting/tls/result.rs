//! What one delivery session counts as in a TLS report (RFC 8460 section 4.3): the one
//! mapping from tlsgate's TLS failures and policy decisions to RFC 8460 result types.

use crate::policy::decision::Requirement;
use crate::tls::client::TlsFailure;
use crate::tls_report::ResultType;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// How a session with one MX host ended, as far as TLS reporting cares.
#[derive(Debug, Clone, Copy)]
pub enum SessionOutcome<'a> {
    /// The policy decision did not let the host be used (`Requirement::Skip`); carries the
    /// decision's label (`dnssec_bogus`, `tlsa_lookup_failed`, `dane_required`).
    Skipped(&'a str),
    /// The session is up and runs over TLS that met the requirement.
    Tls,
    /// The session is up in plaintext: an opportunistic host without STARTTLS, or one that
    /// refused it (with `Some`: the TLS failure after which it was retried in plaintext).
    Plaintext(Option<&'a TlsFailure>),
    /// The TLS requirement was not met on the connection.
    Failed(&'a TlsFailure),
    /// The connection failed before the TLS decision was made (connect, greeting, EHLO):
    /// nothing about TLS to report.
    NotReached,
}

/// The result to count for a session run under `require`: `Some(Ok)` for a successful TLS
/// session, `Some(Err(type))` for a failure, `None` when it is not reported (a `none`
/// policy, or the connection never got to TLS). This is the one mapping (issue 13 item 2):
///
/// * certificate faults map to their RFC 8460 4.3.1 names; the validity period (expired,
///   not yet valid, an intermediate's too) to `certificate-expired`, as the metric does;
/// * no STARTTLS, or STARTTLS refused, is `starttls-not-supported`;
/// * a DANE mismatch is `tlsa-invalid` (4.3.2: no record of the RRset matched);
/// * a skipped host: a DNSSEC-bogus answer is `dnssec-invalid`, DANE required without usable
///   records is `dane-required`, and a failed TLSA lookup is `dnssec-invalid` too — 4.3.2
///   says "no valid records were returned from the recursive resolver", which is what a
///   lookup that fails (SERVFAIL, timeout) means; `tlsa-invalid` is for records that came
///   back and did not work;
/// * every other failure of the STARTTLS exchange or the handshake (timeouts, aborts,
///   protocol version, alerts, response injection) is the general `validation-failure`.
pub fn result_type(
    require: &Requirement,
    outcome: SessionOutcome<'_>,
) -> Option<Result<(), ResultType>> {
    if *require == Requirement::Plaintext {
        return None;
    }
    match outcome {
        SessionOutcome::NotReached => None,
        SessionOutcome::Tls => Some(Ok(())),
        SessionOutcome::Skipped(label) => Some(Err(match label {
            "dane_required" => ResultType::DaneRequired,
            "dnssec_bogus" | "tlsa_lookup_failed" => ResultType::DnssecInvalid,
            _ => ResultType::ValidationFailure,
        })),
        SessionOutcome::Plaintext(None) => Some(Err(ResultType::StarttlsNotSupported)),
        SessionOutcome::Plaintext(Some(failure)) | SessionOutcome::Failed(failure) => {
            Some(Err(failure_result(failure)))
        }
    }
}

/// The RFC 8460 section 4.3 result type of a TLS failure: the one mapping, used for delivery
/// sessions and for MTA-STS `testing` evaluations alike.
pub fn failure_result(failure: &TlsFailure) -> ResultType {
    match failure {
        TlsFailure::NoStarttls | TlsFailure::StarttlsRefused(_) => ResultType::StarttlsNotSupported,
        TlsFailure::HostnameMismatch(_) => ResultType::CertificateHostMismatch,
        TlsFailure::CertExpired
        | TlsFailure::CertNotYetValid
        | TlsFailure::IntermediateExpired { .. }
        | TlsFailure::IntermediateNotYetValid { .. } => ResultType::CertificateExpired,
        TlsFailure::CertUntrusted => ResultType::CertificateNotTrusted,
        TlsFailure::DaneMismatch(_) => ResultType::TlsaInvalid,
        TlsFailure::StarttlsTimeout(_)
        | TlsFailure::StarttlsLost(_)
        | TlsFailure::ClosedAfterStarttls
        | TlsFailure::HandshakeTimeout(_)
        | TlsFailure::ProtocolVersion
        | TlsFailure::Handshake(_)
        | TlsFailure::ClientCertificateRequired
        | TlsFailure::AfterHandshake(_)
        | TlsFailure::ResponseInjection => ResultType::ValidationFailure,
    }
}

/// The local address the system would use toward `peer` (RFC 8460 4.4 `sending-mta-ip`):
/// found by connecting a UDP socket, which only looks the route up and sends nothing.
/// `None` when there is no route.
pub fn sending_ip_toward(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkix() -> Requirement {
        Requirement::Pkix { names: Vec::new() }
    }

    fn failed(f: TlsFailure) -> Option<Result<(), ResultType>> {
        result_type(&pkix(), SessionOutcome::Failed(&f))
    }

    #[test]
    fn tls_failures_map_to_rfc8460_result_types() {
        use ResultType::*;
        assert_eq!(
            failed(TlsFailure::NoStarttls),
            Some(Err(StarttlsNotSupported))
        );
        assert_eq!(
            failed(TlsFailure::StarttlsRefused("454 no".into())),
            Some(Err(StarttlsNotSupported))
        );
        assert_eq!(
            failed(TlsFailure::HostnameMismatch("mx.a.test".into())),
            Some(Err(CertificateHostMismatch))
        );
        assert_eq!(
            failed(TlsFailure::CertExpired),
            Some(Err(CertificateExpired))
        );
        assert_eq!(
            failed(TlsFailure::CertUntrusted),
            Some(Err(CertificateNotTrusted))
        );
        assert_eq!(
            failed(TlsFailure::DaneMismatch("x".into())),
            Some(Err(TlsaInvalid))
        );
        assert_eq!(
            failed(TlsFailure::HandshakeTimeout(Duration::from_secs(1))),
            Some(Err(ValidationFailure))
        );
        assert_eq!(
            failed(TlsFailure::ProtocolVersion),
            Some(Err(ValidationFailure))
        );
    }

    #[test]
    fn policy_decisions_map_to_rfc8460_4_3_2() {
        let skip = |label| result_type(&pkix(), SessionOutcome::Skipped(label));
        assert_eq!(skip("dnssec_bogus"), Some(Err(ResultType::DnssecInvalid)));
        assert_eq!(
            skip("tlsa_lookup_failed"),
            Some(Err(ResultType::DnssecInvalid))
        );
        assert_eq!(skip("dane_required"), Some(Err(ResultType::DaneRequired)));
    }

    #[test]
    fn successes_plaintext_and_unreported_sessions() {
        let may = Requirement::Opportunistic;
        assert_eq!(result_type(&pkix(), SessionOutcome::Tls), Some(Ok(())));
        assert_eq!(
            result_type(&may, SessionOutcome::Plaintext(None)),
            Some(Err(ResultType::StarttlsNotSupported))
        );
        assert_eq!(
            result_type(
                &may,
                SessionOutcome::Plaintext(Some(&TlsFailure::CertExpired))
            ),
            Some(Err(ResultType::CertificateExpired))
        );
        assert_eq!(result_type(&pkix(), SessionOutcome::NotReached), None);
        // A `none` policy is not reported at all.
        assert_eq!(
            result_type(&Requirement::Plaintext, SessionOutcome::Plaintext(None)),
            None
        );
    }

    #[test]
    fn sending_ip_toward_loopback_is_loopback() {
        assert_eq!(
            sending_ip_toward("127.0.0.1:25".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
