//! Prometheus metrics (design.md, "Metrics"; prefix `tlsgate_`) and the HTTP endpoint that
//! serves them with `/healthz` and `/readyz`.
//!
//! Every label value comes from a small fixed set (listener role, TLS yes/no, a reason word, a
//! TLS level, a DSN kind): never an address, a host name or a free-form error, so the number
//! of series stays bounded whatever the traffic. The one exception is the partner monitoring
//! (issue 15 item 3): its `domain` and `host` labels come from the domain list the operator
//! installed and the partners' MX records, not from traffic, and the series of a domain that
//! left the list are removed.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a message or recipient was refused, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A recipient this client may not relay to (S6).
    RelayDenied,
    /// A local recipient whose local part routes onwards (S6).
    RoutedAddress,
    /// Plaintext from a listed sender (T5).
    PlaintextListed,
    /// MAIL FROM before STARTTLS on a `require_tls` listener.
    TlsRequired,
    /// Over `server.max_message_size` (552).
    TooLarge,
    /// Bare CR or LF in the data (SMTP smuggling).
    BareLineEnding,
    /// `limits.hop_count_limit` or more `Received:` fields: a mail loop (RFC 5321 6.3).
    TooManyHops,
    /// The queue could not commit the message (452).
    StoreError,
    /// Over `limits.max_recipients`.
    TooManyRecipients,
    /// No verified client certificate on a `client_cert = "required"` listener (S2).
    ClientCertRequired,
}

impl RejectReason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::RelayDenied => "relay_denied",
            RejectReason::RoutedAddress => "routed_address",
            RejectReason::PlaintextListed => "plaintext_listed",
            RejectReason::TlsRequired => "tls_required",
            RejectReason::TooLarge => "too_large",
            RejectReason::BareLineEnding => "bare_line_ending",
            RejectReason::TooManyHops => "too_many_hops",
            RejectReason::StoreError => "store_error",
            RejectReason::TooManyRecipients => "too_many_recipients",
            RejectReason::ClientCertRequired => "client_cert_required",
        }
    }
}

/// Every `result` label of `tlsgate_mta_sts_fetch_total` (registered at start).
pub const MTA_STS_FETCH_RESULTS: &[&str] = &["ok", "fetch_error", "invalid", "webpki_invalid"];
/// The `result` values of `tlsgate_tls_reports_sent_total`: queued as mail (`mailto`), posted
/// (`https`), not delivered to the target (`failed`), or a `mailto:` target skipped because
/// no DKIM key signs for the submitter domain (`no_dkim_key`, RFC 8460 3).
pub const TLS_REPORT_RESULTS: [&str; 4] = ["mailto", "https", "failed", "no_dkim_key"];
/// The `result` values of `tlsgate_dmarc_reports_sent_total`: queued as mail (`mailto`), not
/// queued (`failed`, tried again at the next run), larger than the destination's `!size`
/// limit (`too_large`, RFC 7489 6.4), or a destination outside the author's organisation
/// that does not authorise the reports (`not_authorized`, RFC 7489 7.1).
pub const DMARC_REPORT_RESULTS: [&str; 4] = ["mailto", "failed", "too_large", "not_authorized"];
/// The `result` values of `tlsgate_domain_list_fetch_total` (T10, issue 15 item 5): fetched
/// and in force (`ok`), not fetched (`fetch_error`: TLS, HTTP status, size, time), fetched but
/// refused by the list's rules (`refused`), or not saved (`save_error`).
pub const LIST_FETCH_RESULTS: [&str; 4] = ["ok", "fetch_error", "refused", "save_error"];

/// Every Prometheus metric tlsgate exports (`/metrics`), registered once at start.
pub struct Metrics {
    registry: Registry,
    /// `tlsgate_connections_total`: sessions ended, by listener role and TLS.
    pub connections: IntCounterVec,
    /// `tlsgate_messages_accepted_total`: messages durably queued, by listener role.
    pub messages_accepted: IntCounterVec,
    /// `tlsgate_messages_rejected_total`: refusals by listener role and [`RejectReason`].
    pub messages_rejected: IntCounterVec,
    /// `tlsgate_plaintext_refused_total`: plaintext from listed domains refused (T5).
    pub plaintext_refused: IntCounter,
    /// `tlsgate_deliveries_total`: recipient delivery results, by result and TLS level.
    pub deliveries: IntCounterVec,
    /// `tlsgate_tls_failures_total`: TLS failures toward listed domains, by reason.
    pub tls_failures: IntCounterVec,
    /// `tlsgate_dsn_sent_total`: DSNs queued, by kind.
    pub dsn_sent: IntCounterVec,
    /// `tlsgate_store_errors_total`: queue store errors.
    pub store_errors: IntCounter,
    /// `tlsgate_tls_reports_sent_total{result}`: TLS reports (RFC 8460) per `rua` target:
    /// [`TLS_REPORT_RESULTS`].
    pub tls_reports_sent: IntCounterVec,
    /// `tlsgate_dmarc_reports_sent_total{result}`: DMARC aggregate reports (RFC 7489 7.2) per
    /// `rua` destination: [`DMARC_REPORT_RESULTS`].
    pub dmarc_reports_sent: IntCounterVec,
    /// `tlsgate_auth_results_total`: sender authentication results (D4), by method and result.
    pub auth_results: IntCounterVec,
    /// `tlsgate_queue_messages`: messages in the queue.
    pub queue_messages: IntGauge,
    /// `tlsgate_queue_stalled`: 1 once the queue watchdog found the committer stuck (issue 16
    /// item 2); the process exits right after.
    pub queue_stalled: IntGauge,
    /// `tlsgate_queue_accepting`: 1 while the queue can take new mail, 0 while it cannot (a
    /// full file system, a store being reopened; issue 16 item 4). `/readyz` follows it.
    pub queue_accepting: IntGauge,
    /// `tlsgate_queue_oldest_message_age_seconds`: age of the oldest message, in seconds.
    pub queue_oldest_message_age_seconds: IntGauge,
    /// `tlsgate_domain_list_domains`: domains on the list in force.
    pub domain_list_domains: IntGauge,
    /// `tlsgate_domain_list_age_seconds`: the list's age (T10), in the base unit Prometheus
    /// asks for (seconds, not days).
    pub domain_list_age_seconds: IntGauge,
    /// `tlsgate_domain_list_max_age_seconds`: `domain_list.max_age_days`, in seconds.
    pub domain_list_max_age_seconds: IntGauge,
    /// `tlsgate_tls_certificate_expiry_timestamp_seconds`: when our own STARTTLS certificate
    /// (the leaf of `tls.cert`, or the generated one) expires, Unix seconds; set at start and
    /// at every reload. Alert rule TlsgateCertificateExpiresSoon fires 14 days before.
    pub tls_certificate_expiry: IntGauge,
    /// `tlsgate_domain_list_reload_failures_total`: list files refused at reload.
    pub domain_list_reload_failures: IntCounter,
    /// `tlsgate_dnssec_available{mode}`: 1 when the resolver path carries DNSSEC (the last
    /// self-check passed, or none has concluded yet), 0 when DANE is unavailable (D5); `mode`
    /// is `dns.dnssec` (`off` is always 0).
    pub dnssec_available: IntGaugeVec,
    /// `tlsgate_mta_sts_fetch_total{result}`: MTA-STS policy fetches (RFC 8461 section 3.3),
    /// by result: `ok`, `fetch_error`, `invalid`, `webpki_invalid` (RFC 8460 section 4.3.3).
    pub mta_sts_fetches: IntCounterVec,
    /// `tlsgate_mta_sts_policies{mode}`: unexpired MTA-STS policies in the cache, by mode.
    pub mta_sts_policies: IntGaugeVec,
    /// `tlsgate_partner_tls_ok{domain}`: 1 when the last background check of a listed domain
    /// passed (delivery would succeed over the TLS its policy demands), 0 when it failed
    /// (issue 15 item 3, T7).
    pub partner_tls_ok: IntGaugeVec,
    /// `tlsgate_partner_certificate_expiry_timestamp_seconds{domain,host}`: when the
    /// certificate an MX host of a listed domain presented expires (Unix time; the earliest
    /// over the host's addresses).
    pub partner_certificate_expiry: IntGaugeVec,
    /// `tlsgate_partner_check_timestamp_seconds`: when the last background check run ended
    /// (Unix time).
    pub partner_check_timestamp: IntGauge,
    /// `tlsgate_domain_list_fetch_timestamp_seconds`: when `domain_list.url` was last fetched
    /// (Unix time, whatever the result).
    pub domain_list_fetch_timestamp: IntGauge,
    /// `tlsgate_domain_list_fetch_total{result}`: fetches of `domain_list.url` by
    /// [`LIST_FETCH_RESULTS`].
    pub domain_list_fetches: IntCounterVec,
    /// Listeners bound and queue open (`/readyz`).
    ready: AtomicBool,
    /// Why the queue cannot take mail, while it cannot (the `/readyz` body).
    queue_refusal: std::sync::Mutex<Option<String>>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    // Registration fails only for a duplicate name, which is a programming error caught by the
    // unit test below.
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Metrics {
    /// A fresh registry with every metric registered (label sets pre-created where known, so
    /// they export 0).
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let metrics = Metrics {
            connections: counter_vec(
                &r,
                "tlsgate_connections_total",
                "SMTP sessions ended, by listener role and whether TLS was used",
                &["listener", "tls"],
            ),
            messages_accepted: counter_vec(
                &r,
                "tlsgate_messages_accepted_total",
                "Messages accepted (durably queued) by listener role",
                &["listener"],
            ),
            messages_rejected: counter_vec(
                &r,
                "tlsgate_messages_rejected_total",
                "Messages or recipients refused, by listener role and reason",
                &["listener", "reason"],
            ),
            plaintext_refused: counter(
                &r,
                "tlsgate_plaintext_refused_total",
                "Plaintext sessions or messages from listed domains refused (T5)",
            ),
            deliveries: counter_vec(
                &r,
                "tlsgate_deliveries_total",
                "Recipient delivery results, by result, TLS level and the rule that set the \
                 level (list, config, dane, requiretls, opportunistic)",
                &["result", "tls_level", "policy_source"],
            ),
            tls_failures: counter_vec(
                &r,
                "tlsgate_tls_failures_total",
                "TLS failures toward listed domains (host skipped, never plaintext), by reason",
                &["reason"],
            ),
            dsn_sent: counter_vec(
                &r,
                "tlsgate_dsn_sent_total",
                "Delivery status notifications queued, by kind",
                &["kind"],
            ),
            tls_reports_sent: counter_vec(
                &r,
                "tlsgate_tls_reports_sent_total",
                "TLS reports (RFC 8460) per rua target: sent by mailto or https, failed, or \
                 not sent for want of a DKIM key",
                &["result"],
            ),
            dmarc_reports_sent: counter_vec(
                &r,
                "tlsgate_dmarc_reports_sent_total",
                "DMARC aggregate reports (RFC 7489) per rua destination: sent by mail, failed, \
                 too large for the destination, or not authorised by it",
                &["result"],
            ),
            store_errors: counter(
                &r,
                "tlsgate_store_errors_total",
                "Queue store errors (a message refused with 452, or a result not recorded)",
            ),
            auth_results: counter_vec(
                &r,
                "tlsgate_auth_results_total",
                "Inbound sender authentication results (D4), by method and result",
                &["method", "result"],
            ),
            queue_messages: gauge(&r, "tlsgate_queue_messages", "Messages in the queue"),
            queue_stalled: gauge(
                &r,
                "tlsgate_queue_stalled",
                "1 when the queue committer made no progress for queue.stall_timeout while work waited",
            ),
            queue_accepting: gauge(
                &r,
                "tlsgate_queue_accepting",
                "1 while the queue can take new mail, 0 while it cannot (full file system, store reopening)",
            ),
            queue_oldest_message_age_seconds: gauge(
                &r,
                "tlsgate_queue_oldest_message_age_seconds",
                "Age of the oldest message in the queue",
            ),
            domain_list_domains: gauge(
                &r,
                "tlsgate_domain_list_domains",
                "Domains on the tvungen TLS domain list in force",
            ),
            domain_list_age_seconds: gauge(
                &r,
                "tlsgate_domain_list_age_seconds",
                "Age of the domain list (T10)",
            ),
            domain_list_max_age_seconds: gauge(
                &r,
                "tlsgate_domain_list_max_age_seconds",
                "Configured domain_list.max_age_days, in seconds",
            ),
            tls_certificate_expiry: gauge(
                &r,
                "tlsgate_tls_certificate_expiry_timestamp_seconds",
                "When the STARTTLS certificate tlsgate presents expires (Unix time)",
            ),
            domain_list_reload_failures: counter(
                &r,
                "tlsgate_domain_list_reload_failures_total",
                "Domain list files refused at reload (the old list stayed in force)",
            ),
            dnssec_available: gauge_vec(
                &r,
                "tlsgate_dnssec_available",
                "1 when the resolver path carries DNSSEC (self-check passed), 0 when DANE is \
                 unavailable (D5), by dns.dnssec mode",
                &["mode"],
            ),
            mta_sts_fetches: counter_vec(
                &r,
                "tlsgate_mta_sts_fetch_total",
                "MTA-STS policy fetches (RFC 8461), by result: ok, fetch_error, invalid, \
                 webpki_invalid",
                &["result"],
            ),
            mta_sts_policies: gauge_vec(
                &r,
                "tlsgate_mta_sts_policies",
                "Unexpired MTA-STS policies in the cache, by mode (enforce, testing)",
                &["mode"],
            ),
            partner_tls_ok: gauge_vec(
                &r,
                "tlsgate_partner_tls_ok",
                "1 when the last background check of a listed domain passed, 0 when it failed \
                 (T7)",
                &["domain"],
            ),
            partner_certificate_expiry: gauge_vec(
                &r,
                "tlsgate_partner_certificate_expiry_timestamp_seconds",
                "When the certificate a listed domain's MX host presented expires (Unix time)",
                &["domain", "host"],
            ),
            partner_check_timestamp: gauge(
                &r,
                "tlsgate_partner_check_timestamp_seconds",
                "When the last background check of the listed domains ended (Unix time)",
            ),
            domain_list_fetch_timestamp: gauge(
                &r,
                "tlsgate_domain_list_fetch_timestamp_seconds",
                "When domain_list.url was last fetched (Unix time)",
            ),
            domain_list_fetches: counter_vec(
                &r,
                "tlsgate_domain_list_fetch_total",
                "Fetches of domain_list.url, by result: ok, fetch_error, refused, save_error",
                &["result"],
            ),
            registry: r,
            ready: AtomicBool::new(false),
            queue_refusal: std::sync::Mutex::new(None),
        };
        // Series that alerts watch exist from the start at 0, so `increase()` sees the first
        // event of each kind too.
        let skips = crate::policy::decision::SKIP_LABELS;
        for reason in crate::tls::client::TlsFailure::METRIC_LABELS
            .iter()
            .chain(skips)
        {
            metrics.tls_failures.with_label_values(&[reason]);
        }
        for kind in ["failure", "delay", "success"] {
            metrics.dsn_sent.with_label_values(&[kind]);
        }
        for result in MTA_STS_FETCH_RESULTS {
            metrics.mta_sts_fetches.with_label_values(&[result]);
        }
        for mode in ["enforce", "testing"] {
            metrics.mta_sts_policies.with_label_values(&[mode]);
        }
        for result in TLS_REPORT_RESULTS {
            metrics.tls_reports_sent.with_label_values(&[result]);
        }
        for result in DMARC_REPORT_RESULTS {
            metrics.dmarc_reports_sent.with_label_values(&[result]);
        }
        for result in LIST_FETCH_RESULTS {
            metrics.domain_list_fetches.with_label_values(&[result]);
        }
        // The standard process metrics (`process_cpu_seconds_total`,
        // `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
        // `process_start_time_seconds`, …) from the prometheus crate's collector, read from
        // /proc at each scrape (issue 14 item 4: what every exporter offers).
        let _ = metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        // `tlsgate_build_info{version} 1`, the Prometheus convention for "which build runs
        // here" (issue 14 item 4): joins with other series to tell versions apart in a fleet.
        let build_info = gauge_vec(
            &metrics.registry,
            "tlsgate_build_info",
            "The running tlsgate build (always 1), by version",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Until the queue watcher says otherwise (ops::watchdog::watch_acceptance).
        metrics.queue_accepting.set(1);
        Arc::new(metrics)
    }

    /// Counts one refusal on a listener role (`inbound`/`outbound`).
    pub fn reject(&self, listener: &str, reason: RejectReason) {
        self.messages_rejected
            .with_label_values(&[listener, reason.as_str()])
            .inc();
    }

    /// Sets what `/readyz` reports.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Sets whether the queue takes mail: `None` when it does, else why not
    /// (`tlsgate_queue_accepting` and the `/readyz` body; issue 16 item 4).
    pub fn set_queue_refusal(&self, refusal: Option<String>) {
        self.queue_accepting.set(i64::from(refusal.is_none()));
        *self.queue_refusal.lock().unwrap_or_else(|p| p.into_inner()) = refusal;
    }

    /// Why the queue cannot take mail now, `None` while it can.
    pub fn queue_refusal(&self) -> Option<String> {
        self.queue_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Listeners bound, queue open and taking mail (`/readyz` answers 200).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.queue_accepting.get() == 1
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else if let Some(reason) = m.queue_refusal() {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: the queue cannot take mail: {reason}\n"),
                        )
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
                    }
                },
            ),
        )
        .with_state(metrics);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_with_help() {
        let m = Metrics::new();
        m.reject("inbound", RejectReason::RelayDenied);
        m.deliveries
            .with_label_values(&["delivered", "verify", "list"])
            .inc();
        m.tls_failures.with_label_values(&["no_starttls"]).inc();
        m.dsn_sent.with_label_values(&["failure"]).inc();
        m.connections.with_label_values(&["inbound", "yes"]).inc();
        m.messages_accepted.with_label_values(&["inbound"]).inc();
        let text = m.render();
        for name in [
            "tlsgate_connections_total",
            "tlsgate_messages_accepted_total",
            "tlsgate_messages_rejected_total",
            "tlsgate_plaintext_refused_total",
            "tlsgate_deliveries_total",
            "tlsgate_tls_failures_total",
            "tlsgate_dsn_sent_total",
            "tlsgate_store_errors_total",
            "tlsgate_queue_messages",
            "tlsgate_queue_oldest_message_age_seconds",
            "tlsgate_domain_list_domains",
            "tlsgate_domain_list_age_seconds",
            "tlsgate_domain_list_max_age_seconds",
            "tlsgate_tls_certificate_expiry_timestamp_seconds",
            "tlsgate_domain_list_reload_failures_total",
            "tlsgate_partner_check_timestamp_seconds",
            "tlsgate_domain_list_fetch_timestamp_seconds",
            "tlsgate_domain_list_fetch_total",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains(
            "tlsgate_messages_rejected_total{listener=\"inbound\",reason=\"relay_denied\"} 1"
        ));
    }
}
