//! MTA-STS `testing` mode (RFC 8461 section 5): mail is delivered under the other rules, and
//! what `enforce` would have said about the session is reported (RFC 8460). This file is the
//! one place that evaluates it and records it.
//!
//! For a host whose decision carries a `testing` policy (`TlsDecision::sts_testing`), the
//! evaluation asks what `enforce` checks: does the MX host match one of the policy's `mx`
//! patterns (section 4.1), was TLS negotiated, and is the chain the host presented valid for
//! its name under PKIX (section 4.2; the connection itself, at `may`, did not check it). The
//! session's result, success or failure, is recorded through the MTA-STS service's sink with
//! the `sts` policy; the per-session hook of TLS reporting must not record these sessions a
//! second time.

use super::client::{ClientError, SmtpConnection};
use crate::domain::Domain;
use crate::policy::decision::TlsDecision;
use crate::policy::mta_sts::StsPolicy;
use crate::reporting::tls::failure_result;
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls_report::{ResultType, SessionResult, TlsReportSink};

/// What `enforce` would have said about a session with `host` under `policy`: `Ok` for a
/// session it would have accepted, else the RFC 8460 result type and a short reason.
/// `connection`: the connection as opened at the decision's level, or its failure.
pub fn sts_testing_result(
    tls: &ClientTls,
    policy: &StsPolicy,
    host: &str,
    connection: Result<&SmtpConnection, &ClientError>,
) -> Result<(), (ResultType, String)> {
    if !policy.matches_mx(host) {
        return Err((
            ResultType::ValidationFailure,
            format!(
                "MX host {host} matches none of the policy's mx patterns ({})",
                policy.mx.join(", ")
            ),
        ));
    }
    let conn = match connection {
        Ok(conn) => conn,
        Err(ClientError::Tls(failure)) => {
            return Err((failure_result(failure), failure.to_string()))
        }
        // Not a TLS failure ([`record`] does not report these sessions).
        Err(other) => return Err((ResultType::ValidationFailure, other.to_string())),
    };
    if conn.tls.is_none() {
        return Err(if conn.caps.starttls {
            (
                ResultType::ValidationFailure,
                "TLS failed; the session went on in plaintext".to_string(),
            )
        } else {
            (
                ResultType::StarttlsNotSupported,
                TlsFailure::NoStarttls.to_string(),
            )
        });
    }
    tls.check_chain(&conn.peer_chain, host)
        .map_err(|failure| (failure_result(&failure), failure.to_string()))
}

/// Evaluates and records one session under a `testing` policy (see the module doc); does
/// nothing when `decision` carries none, or when the connection failed for a reason other
/// than TLS (no connection, a refused greeting, a timeout: no TLS session to report).
pub fn record(
    sink: &dyn TlsReportSink,
    tls: &ClientTls,
    decision: &TlsDecision,
    domain: Option<&Domain>,
    host: &str,
    addr: std::net::SocketAddr,
    connection: Result<&SmtpConnection, &ClientError>,
) {
    let Some(policy) = decision.sts_testing() else {
        return;
    };
    if matches!(connection, Err(e) if !matches!(e, ClientError::Tls(_))) {
        return;
    }
    let Some(report_policy) = decision.report_policy(domain) else {
        return;
    };
    let result = sts_testing_result(tls, policy, host, connection);
    if let Err((kind, reason)) = &result {
        tracing::info!(host = %host, result = kind.as_str(), reason = %reason,
            "MTA-STS testing: enforce would have refused this host");
    }
    sink.record(SessionResult {
        policy: report_policy,
        receiving_mx_hostname: host.to_string(),
        receiving_ip: Some(addr.ip()),
        sending_mta_ip: None,
        detail: result.as_ref().err().map(|(_, reason)| reason.clone()),
        result: result.map_err(|(kind, _)| kind),
    });
}
