//! The DNSSEC self-check (D5), at start and every hour: does the resolver path carry DNSSEC?
//! A resolver that strips signatures must not turn into an outage of all mail to signed
//! domains: where the check fails, DANE is unavailable, every answer counts as insecure (not
//! bogus), a warning is logged and `tlsgate_dnssec_available` drops to 0 (the alert "DNSSEC
//! unavailable" watches it). Where it passes, a signature that fails is bogus.

use crate::dns::{DnssecStatus, HickoryResolver};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the check runs after a conclusive answer.
const EVERY: Duration = Duration::from_secs(3600);

/// How soon the check runs again after it got no answer at all (a network fault says nothing
/// about the path's DNSSEC, and the status stays as it was).
const RETRY: Duration = Duration::from_secs(60);

/// Runs the self-check now and every hour until `shutdown`, logging each change of status and
/// keeping the gauge current. `dns.dnssec = "off"` sets the gauge to 0 once and returns.
pub async fn self_check(
    resolver: Arc<HickoryResolver>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mode = resolver.dnssec_mode();
    let gauge = metrics.dnssec_available.with_label_values(&[mode.as_str()]);
    let mut last = resolver.dnssec_status();
    gauge.set(i64::from(last.in_use()));
    if last == DnssecStatus::Off {
        return;
    }
    loop {
        let wait = match resolver.check_dnssec().await {
            Ok(status) => {
                report(mode.as_str(), &last, &status);
                gauge.set(i64::from(status.in_use()));
                last = status;
                EVERY
            }
            Err(e) => {
                tracing::info!(
                    dnssec = mode.as_str(),
                    error = %e,
                    "DNSSEC self-check got no answer; status unchanged, trying again in a minute"
                );
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Logs a change (and the unavailable state at every check, so it is never out of sight).
fn report(mode: &str, before: &DnssecStatus, now: &DnssecStatus) {
    match now {
        DnssecStatus::Unavailable { reason } => tracing::warn!(
            dnssec = mode,
            %reason,
            "DNSSEC unavailable on the resolver path: DANE is off and every DNS answer counts \
             as insecure until the check passes (D5)"
        ),
        DnssecStatus::Available if before != now => {
            tracing::info!(
                dnssec = mode,
                "DNSSEC self-check passed: answers are validated"
            )
        }
        _ => {}
    }
}
