//! What an attempt's outcome means for one recipient: its new durable state, the delivery
//! status notification its sender is owed, and the audit entry the decision leaves.
//!
//! The DSN decision follows RFC 3461 (NOTIFY: which kinds a recipient wants; section 6.2: a
//! next hop without DSN support ends our duty to report success, so we send `relayed`
//! ourselves) and RFC 3464 (the `Status`, `Remote-MTA` and `Diagnostic-Code` fields); T6 says
//! when a sender hears of trouble (at once for a failure, after `delivery.delay_warning` for a
//! delay, after `outbound.tls_failure_warning_after` for a TLS-policy deferral), T12 that
//! success reports are honoured, S1 that every delivery and permanent failure is audited.
//!
//! [`record`] is pure: it decides, the engine then submits the audit event, writes the state
//! and queues the reports ([`send_dsn`]).

use super::attempt::Outcome;
use super::Engine;
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::dsn::{self, DsnKind, DsnRequest, ReportedRecipient};
use crate::queue::message::{MessageMeta, Recipient, RecipientState, RecipientStatus};
use crate::queue::retry;
use crate::queue::StoreError;
use crate::smtp::reply::EnhancedStatus;
use std::collections::BTreeMap;
use std::time::Duration;

/// The settings the decision depends on.
pub(super) struct Rules<'a> {
    /// `delivery.retry_schedule`: when a deferred recipient is tried next.
    pub retry_schedule: &'a [Duration],
    /// `delivery.expiry`: no retry is planned past it.
    pub expiry: Duration,
    /// `delivery.delay_warning`: the age of a message at which a delay DSN is due.
    pub delay_warning: Duration,
    /// `outbound.tls_failure_warning_after`: the same for a deferral by TLS policy (T6).
    pub tls_failure_warning_after: Duration,
}

impl Rules<'_> {
    pub(super) fn of(config: &Config) -> Rules<'_> {
        let d = &config.delivery;
        Rules {
            retry_schedule: &d.retry_schedule,
            expiry: d.expiry,
            delay_warning: d.delay_warning,
            tls_failure_warning_after: config.outbound.tls_failure_warning_after,
        }
    }
}

/// The decision about one recipient after one outcome.
#[derive(Debug)]
pub(super) struct Recorded {
    /// The recipient's new state, to be written durably.
    pub state: RecipientState,
    /// The DSN this recipient is to be reported in, if any.
    pub report: Option<(DsnKindKey, ReportedRecipient)>,
    /// The audit entry the decision leaves (S1), if any.
    pub audit: Option<AuditEvent>,
}

/// Turns an outcome for `recipient` of `meta` into the recipient's new state, the DSN it calls
/// for and its audit entry. `old` is the recipient's state before the attempt.
pub(super) fn record(
    rules: &Rules<'_>,
    meta: &MessageMeta,
    recipient: &Recipient,
    old: &RecipientState,
    outcome: &Outcome,
    now: u64,
) -> Recorded {
    let mut state = old.clone();
    state.attempts += 1;
    state.last_attempt = now;
    // RFC 3464 2.3.5/2.3.6: Remote-MTA and an `smtp` diagnostic only for a remote's own reply.
    let report = |status: EnhancedStatus, host: &Option<String>, remote: bool, diagnostic: &str| {
        ReportedRecipient {
            recipient: recipient.clone(),
            status: status.to_string(),
            remote_mta: host.clone().filter(|_| remote),
            diagnostic: diagnostic.to_string(),
            last_attempt: now,
        }
    };
    let mut dsn = None;
    let mut audit = None;
    match outcome {
        Outcome::Delivered {
            host,
            reply,
            peer_does_dsn,
            tls_version,
            level,
            source,
        } => {
            audit = Some(AuditEvent::Delivered {
                queue_id: meta.id.to_string(),
                domain: recipient_domain(&recipient.address),
                host: host.clone(),
                tls_version: tls_version.clone().unwrap_or_else(|| "none".into()),
                level: level.to_string(),
                policy_source: source.label().to_string(),
            });
            state.status = RecipientStatus::Delivered;
            state.last_reply = Some(reply.clone());
            let status = EnhancedStatus::new(2, 0, 0);
            state.last_status = Some(status.to_string());
            state.remote_mta = Some(host.clone());
            state.tls_deferral = false;
            if !peer_does_dsn && DsnKind::Relayed.wanted_by(&recipient.notify) {
                let reported = report(status, &Some(host.clone()), true, reply);
                dsn = Some((DsnKindKey::Relayed, reported));
            }
        }
        Outcome::Deferred {
            host,
            status,
            reason,
            remote,
            tls,
        } => {
            state.status = RecipientStatus::Deferred;
            state.last_reply = Some(reason.clone());
            state.last_status = Some(status.to_string());
            state.remote_mta = host.clone();
            state.tls_deferral = *tls;
            state.next_attempt = retry::next_attempt(rules.retry_schedule, state.attempts, now)
                .min(retry::expires_at(meta.reception.received_at, rules.expiry));
            // T6: a TLS-policy deferral is worth telling the sender about much sooner than an
            // ordinary one; a silent multi-day deferral is the worst outcome for the user.
            let received = meta.reception.received_at;
            let warn = retry::older_than(received, rules.delay_warning, now)
                || (*tls && retry::older_than(received, rules.tls_failure_warning_after, now));
            if warn && !state.delay_notified && DsnKind::Delay.wanted_by(&recipient.notify) {
                state.delay_notified = true;
                dsn = Some((DsnKindKey::Delay, report(*status, host, *remote, reason)));
            }
        }
        Outcome::Failed {
            host,
            status,
            reason,
            remote,
        } => {
            state.status = RecipientStatus::Failed;
            state.last_reply = Some(reason.clone());
            // A failure is reported with a permanent class even when its last cause was
            // temporary (expiry): RFC 3464 2.3.4 wants the status to match the action.
            let status = match status.class {
                4 => EnhancedStatus {
                    class: 5,
                    ..*status
                },
                _ => *status,
            };
            state.last_status = Some(status.to_string());
            state.remote_mta = host.clone();
            audit = Some(AuditEvent::DeliveryFailed {
                queue_id: meta.id.to_string(),
                domain: recipient_domain(&recipient.address),
                host: host.clone(),
                status: status.to_string(),
                by: if *remote { "remote" } else { "tlsgate" }.into(),
                reason: (!remote).then(|| reason.clone()),
            });
            if DsnKind::Failure.wanted_by(&recipient.notify) {
                dsn = Some((DsnKindKey::Failure, report(status, host, *remote, reason)));
            }
        }
    }
    Recorded {
        state,
        report: dsn,
        audit,
    }
}

/// The domain of an address, for audit entries (which name domains, never whole addresses).
fn recipient_domain(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// What a message's recipients need after an attempt: new states, and the DSNs by kind.
#[derive(Default)]
pub(super) struct Results {
    pub updates: Vec<(usize, RecipientState)>,
    pub reports: BTreeMap<DsnKindKey, Vec<ReportedRecipient>>,
}

impl Results {
    /// Adds the decision about the recipient at `index`.
    pub(super) fn add(
        &mut self,
        index: usize,
        state: RecipientState,
        report: Option<(DsnKindKey, ReportedRecipient)>,
    ) {
        if let Some((kind, reported)) = report {
            self.reports.entry(kind).or_default().push(reported);
        }
        self.updates.push((index, state));
    }
}

/// `DsnKind` ordered, so reports go out in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum DsnKindKey {
    Failure,
    Delay,
    Relayed,
}

impl DsnKindKey {
    pub(super) fn kind(self) -> DsnKind {
        match self {
            DsnKindKey::Failure => DsnKind::Failure,
            DsnKindKey::Delay => DsnKind::Delay,
            DsnKindKey::Relayed => DsnKind::Relayed,
        }
    }
}

/// Builds the DSN of `kind` about `recipients` of `meta` and queues it durably, like any
/// message, retrying until it is queued ([`super::until_durable`]). Errors only when it gave up
/// (shutdown): the caller must then not record the recipients' results, so that the next start
/// attempts them and builds the DSN again rather than losing it.
pub(super) async fn send_dsn(
    engine: &Engine,
    meta: &MessageMeta,
    body: &[u8],
    kind: DsnKind,
    recipients: Vec<ReportedRecipient>,
    now: u64,
) -> Result<(), StoreError> {
    let config = &engine.config;
    let request = DsnRequest {
        kind,
        reporting_mta: &config.server.hostname,
        admin_contact: config.server.admin_contact.as_deref(),
        original: meta,
        original_body: Some(body),
        recipients,
        delivery: &config.delivery,
        now,
    };
    let Some(message) = dsn::build(&request) else {
        return Ok(());
    };
    let dsn_id = message.meta.id.clone();
    // A DSN is a delivery result: retried until queued, not dropped (issue 16 item 4).
    let queued = super::until_durable(engine, &meta.id, "DSN", || {
        engine.committer.commit(message.clone())
    })
    .await;
    match queued {
        Ok(()) => {
            engine
                .metrics
                .dsn_sent
                .with_label_values(&[kind.as_str()])
                .inc();
            crate::audit::submit(
                &engine.audit,
                AuditEvent::DsnSent {
                    queue_id: meta.id.to_string(),
                    dsn_id: dsn_id.to_string(),
                    kind: kind.as_str().to_string(),
                },
            );
            tracing::info!(
            queue_id = %meta.id,
            dsn_id = %dsn_id,
            kind = kind.as_str(),
            to = meta.sender.as_deref().unwrap_or(""),
            "DSN queued"
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(queue_id = %meta.id, error = %e, kind = kind.as_str(),
                "could not queue a DSN; the recipients' results are not recorded either, so the next start tries them (and the DSN) again");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::policy::{PolicySource, TlsLevel};
    use crate::queue::message::{BodyType, DsnNotify, QueueId, Reception};

    const HOUR: u64 = 3600;
    /// When the message arrived.
    const RECEIVED: u64 = 1_000_000;

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(600), Duration::from_secs(HOUR)]
    }

    fn rules(schedule: &[Duration]) -> Rules<'_> {
        Rules {
            retry_schedule: schedule,
            expiry: Duration::from_secs(120 * HOUR),
            delay_warning: Duration::from_secs(4 * HOUR),
            tls_failure_warning_after: Duration::from_secs(HOUR),
        }
    }

    fn recipient(notify: DsnNotify) -> Recipient {
        Recipient {
            address: "kari@Partner.NO".into(),
            notify,
            orcpt: None,
        }
    }

    fn notify_success() -> DsnNotify {
        DsnNotify {
            success: true,
            ..DsnNotify::default()
        }
    }

    fn notify_never() -> DsnNotify {
        DsnNotify {
            never: true,
            success: false,
            failure: false,
            delay: false,
        }
    }

    fn meta(recipient: &Recipient) -> MessageMeta {
        MessageMeta {
            id: QueueId::parse("0000000000002A").unwrap(),
            sender: Some("ola@example.org".into()),
            recipients: vec![recipient.clone()],
            ret: None,
            envid: None,
            body_type: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            reception: Reception {
                client_ip: "192.0.2.1".parse().unwrap(),
                helo: "client.example.org".into(),
                role: Role::Outbound,
                tls: None,
                received_at: RECEIVED,
            },
            received_header: String::new(),
            size: 0,
        }
    }

    fn delivered(peer_does_dsn: bool) -> Outcome {
        Outcome::Delivered {
            host: "mx.partner.no".into(),
            reply: "250 2.0.0 ok".into(),
            peer_does_dsn,
            tls_version: Some("TLSv1.3".into()),
            level: TlsLevel::Verify,
            source: PolicySource::DomainList,
        }
    }

    fn deferred(tls: bool, remote: bool) -> Outcome {
        Outcome::Deferred {
            host: Some("mx.partner.no".into()),
            status: EnhancedStatus::new(4, 7, 5),
            reason: "certificate for mx.partner.no has expired".into(),
            remote,
            tls,
        }
    }

    fn failed(status: &str, remote: bool) -> Outcome {
        Outcome::Failed {
            host: Some("mx.partner.no".into()),
            status: EnhancedStatus::parse(status).unwrap(),
            reason: "550 5.1.1 no such user".into(),
            remote,
        }
    }

    /// Records `outcome` at `now` for a recipient with `notify` and the state `old`.
    fn decide(notify: DsnNotify, old: &RecipientState, outcome: &Outcome, now: u64) -> Recorded {
        let schedule = schedule();
        let recipient = recipient(notify);
        record(
            &rules(&schedule),
            &meta(&recipient),
            &recipient,
            old,
            outcome,
            now,
        )
    }

    fn fresh() -> RecipientState {
        RecipientState::new_pending(RECEIVED)
    }

    fn kind(recorded: &Recorded) -> Option<DsnKindKey> {
        recorded.report.as_ref().map(|(kind, _)| *kind)
    }

    /// RFC 3461 6.2: a next hop without DSN support ends our duty to report, so a recipient
    /// that asked for NOTIFY=SUCCESS gets a `relayed` report naming that host.
    #[test]
    fn delivered_to_a_peer_without_dsn_is_reported_relayed_when_success_was_asked() {
        let now = RECEIVED + 60;
        let r = decide(notify_success(), &fresh(), &delivered(false), now);
        assert_eq!(r.state.status, RecipientStatus::Delivered);
        assert_eq!(r.state.attempts, 1);
        assert_eq!(r.state.last_attempt, now);
        assert_eq!(r.state.last_status.as_deref(), Some("2.0.0"));
        assert_eq!(r.state.remote_mta.as_deref(), Some("mx.partner.no"));
        let (kind, reported) = r.report.expect("a relayed report");
        assert_eq!(kind, DsnKindKey::Relayed);
        assert_eq!(reported.status, "2.0.0");
        assert_eq!(reported.remote_mta.as_deref(), Some("mx.partner.no"));
        assert_eq!(reported.diagnostic, "250 2.0.0 ok");
        // S1: the delivery is audited, naming the domain (lower case), never the address.
        assert_eq!(
            r.audit,
            Some(AuditEvent::Delivered {
                queue_id: "0000000000002A".into(),
                domain: "partner.no".into(),
                host: "mx.partner.no".into(),
                tls_version: "TLSv1.3".into(),
                level: "verify".into(),
                policy_source: "list".into(),
            })
        );
    }

    /// RFC 3461 6.2: a peer that speaks DSN reports success itself; RFC 3461 4.1: without
    /// NOTIFY=SUCCESS nobody asked for one.
    #[test]
    fn delivered_is_not_reported_when_the_peer_reports_or_nobody_asked() {
        let now = RECEIVED + 60;
        let by_peer = decide(notify_success(), &fresh(), &delivered(true), now);
        assert_eq!(kind(&by_peer), None);
        assert_eq!(by_peer.state.status, RecipientStatus::Delivered);
        let unasked = decide(DsnNotify::default(), &fresh(), &delivered(false), now);
        assert_eq!(kind(&unasked), None);
        assert!(matches!(unasked.audit, Some(AuditEvent::Delivered { .. })));
    }

    /// T6: an ordinary deferral is retried on the schedule and reported (once) only after
    /// `delivery.delay_warning`.
    #[test]
    fn deferred_gets_one_delay_report_only_after_the_delay_warning() {
        let early = RECEIVED + HOUR * 2;
        let r = decide(
            DsnNotify::default(),
            &fresh(),
            &deferred(false, true),
            early,
        );
        assert_eq!(r.state.status, RecipientStatus::Deferred);
        assert_eq!(r.state.next_attempt, early + 600);
        assert_eq!(r.state.last_status.as_deref(), Some("4.7.5"));
        assert!(!r.state.delay_notified);
        assert_eq!(kind(&r), None);
        assert_eq!(r.audit, None);

        let late = RECEIVED + HOUR * 4;
        let r = decide(DsnNotify::default(), &r.state, &deferred(false, true), late);
        assert_eq!(r.state.attempts, 2);
        assert_eq!(r.state.next_attempt, late + HOUR);
        assert!(r.state.delay_notified);
        let (kind, reported) = r.report.expect("a delay report");
        assert_eq!(kind, DsnKindKey::Delay);
        assert_eq!(reported.status, "4.7.5");

        // Only once: the next deferral finds `delay_notified` set.
        let later = late + HOUR;
        let again = decide(
            DsnNotify::default(),
            &r.state,
            &deferred(false, true),
            later,
        );
        assert!(again.state.delay_notified);
        assert!(again.report.is_none());
    }

    /// T6: a deferral because the TLS policy could not be met is reported after
    /// `outbound.tls_failure_warning_after`, sooner than an ordinary one.
    #[test]
    fn a_tls_deferral_is_reported_after_the_tls_warning_time() {
        let now = RECEIVED + HOUR;
        let tls = decide(DsnNotify::default(), &fresh(), &deferred(true, false), now);
        assert!(tls.state.tls_deferral);
        assert!(tls.state.delay_notified);
        assert_eq!(kind(&tls), Some(DsnKindKey::Delay));
        let other = decide(DsnNotify::default(), &fresh(), &deferred(false, false), now);
        assert!(!other.state.tls_deferral);
        assert_eq!(kind(&other), None);
        let before = decide(
            DsnNotify::default(),
            &fresh(),
            &deferred(true, false),
            now - 1,
        );
        assert_eq!(kind(&before), None);
    }

    /// RFC 3461 4.1: a recipient who asked for no delay reports gets none, and the warning
    /// stays unsent.
    #[test]
    fn a_deferral_without_notify_delay_is_not_reported() {
        let notify = DsnNotify {
            delay: false,
            ..DsnNotify::default()
        };
        let r = decide(notify, &fresh(), &deferred(true, true), RECEIVED + HOUR * 5);
        assert_eq!(kind(&r), None);
        assert!(!r.state.delay_notified);
    }

    /// No retry is planned past expiry (T6): the last one is at the expiry second.
    #[test]
    fn a_retry_is_never_planned_past_expiry() {
        let now = RECEIVED + 120 * HOUR - 60;
        let r = decide(notify_never(), &fresh(), &deferred(false, true), now);
        assert_eq!(r.state.next_attempt, RECEIVED + 120 * HOUR);
    }

    /// RFC 3464 2.3.4: a failure is reported with a permanent class even when its cause was
    /// temporary (expiry after 4.x deferrals); RFC 3464 2.3.5/2.3.6: our own decision carries
    /// no Remote-MTA, whatever host it concerned.
    #[test]
    fn a_failure_of_our_own_is_permanent_without_remote_mta() {
        let now = RECEIVED + 60;
        let r = decide(DsnNotify::default(), &fresh(), &failed("4.4.7", false), now);
        assert_eq!(r.state.status, RecipientStatus::Failed);
        assert_eq!(r.state.last_status.as_deref(), Some("5.4.7"));
        assert_eq!(r.state.remote_mta.as_deref(), Some("mx.partner.no"));
        let (kind, reported) = r.report.expect("a failure report");
        assert_eq!(kind, DsnKindKey::Failure);
        assert_eq!(reported.status, "5.4.7");
        assert_eq!(reported.remote_mta, None);
        assert_eq!(
            r.audit,
            Some(AuditEvent::DeliveryFailed {
                queue_id: "0000000000002A".into(),
                domain: "partner.no".into(),
                host: Some("mx.partner.no".into()),
                status: "5.4.7".into(),
                by: "tlsgate".into(),
                reason: Some("550 5.1.1 no such user".into()),
            })
        );
    }

    /// RFC 3464 2.3.5: the remote's own reply names it as Remote-MTA; its text is not copied
    /// into the audit log (S1: it may name the recipient).
    #[test]
    fn a_remote_failure_names_the_remote_mta() {
        let now = RECEIVED + 60;
        let r = decide(DsnNotify::default(), &fresh(), &failed("5.1.1", true), now);
        let (_, reported) = r.report.expect("a failure report");
        assert_eq!(reported.status, "5.1.1");
        assert_eq!(reported.remote_mta.as_deref(), Some("mx.partner.no"));
        assert_eq!(reported.diagnostic, "550 5.1.1 no such user");
        let Some(AuditEvent::DeliveryFailed { by, reason, .. }) = r.audit else {
            panic!("a failure audit entry, got {:?}", r.audit);
        };
        assert_eq!((by.as_str(), reason), ("remote", None));
    }

    /// RFC 3461 4.1: NOTIFY=NEVER silences the failure report, not the audit entry (S1).
    #[test]
    fn a_failure_with_notify_never_is_audited_but_not_reported() {
        let r = decide(notify_never(), &fresh(), &failed("5.1.1", true), RECEIVED);
        assert_eq!(r.state.status, RecipientStatus::Failed);
        assert!(r.report.is_none());
        assert!(matches!(r.audit, Some(AuditEvent::DeliveryFailed { .. })));
    }

    #[test]
    fn results_group_reports_by_kind() {
        let mut results = Results::default();
        for (i, outcome) in [
            failed("5.1.1", true),
            delivered(false),
            failed("4.4.7", false),
        ]
        .iter()
        .enumerate()
        {
            let r = decide(notify_success(), &fresh(), outcome, RECEIVED);
            results.add(i, r.state, r.report);
        }
        assert_eq!(results.updates.len(), 3);
        let kinds: Vec<(DsnKindKey, usize)> =
            results.reports.iter().map(|(k, v)| (*k, v.len())).collect();
        assert_eq!(
            kinds,
            vec![(DsnKindKey::Failure, 2), (DsnKindKey::Relayed, 1)]
        );
    }
}
