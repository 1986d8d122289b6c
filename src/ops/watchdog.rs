//! The queue watchdog (issue 16 item 2: no hang). A gateway whose queue store hangs keeps
//! every message but delivers none and answers nobody, which for its users is an outage; the
//! supervisor (systemd, `Restart=on-failure`) can only help if the process says so and ends.
//!
//! When the committer has made no progress for `queue.stall_timeout` while work waits
//! ([`Committer::stalled_for`]): `/readyz` turns 503, `tlsgate_queue_stalled` becomes 1, an
//! error is logged, every session waiting for a commit is answered `451 4.3.0`
//! ([`Committer::declare_stalled`]; nothing was acknowledged, so the client retries), and the
//! process exits with [`EXIT_STALLED`] after [`GRACE`]. Nothing acknowledged is lost: it was
//! on disk before its `250` (S5), and the restarted relay delivers it.

use crate::metrics::Metrics;
use crate::queue::Committer;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The exit status after a stall: EX_TEMPFAIL (sysexits.h), a temporary failure that a
/// restart may cure.
pub const EXIT_STALLED: i32 = 75;
/// Time between the stall being declared and the exit: the waiting sessions get their reply
/// written and a monitoring scrape can see the state.
pub const GRACE: Duration = Duration::from_secs(2);

/// Watches `committer` until `shutdown`; on a stall of `limit` or more, reports it (module
/// doc) and then calls `exit` after [`GRACE`] (the relay passes [`exit_stalled`]).
pub async fn run(
    committer: Committer,
    metrics: Arc<Metrics>,
    limit: Duration,
    shutdown: CancellationToken,
    exit: fn(),
) {
    // Checked ten times per limit, so a stall is seen within 110% of it.
    let tick = (limit / 10).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(stalled) = committer.stalled_for() else {
            continue;
        };
        if stalled < limit {
            continue;
        }
        metrics.queue_stalled.set(1);
        metrics.set_ready(false);
        tracing::error!(
            stalled_for = %humantime::format_duration(Duration::from_secs(stalled.as_secs())),
            waiting = committer.waiting(),
            stall_timeout = %humantime::format_duration(limit),
            "queue stalled: the committer made no progress while work waited; answering \
             waiting sessions 451 and exiting so that the supervisor restarts the relay \
             (nothing acknowledged is lost)"
        );
        committer.declare_stalled();
        tokio::time::sleep(GRACE).await;
        exit();
        return;
    }
}

/// Ends the process with [`EXIT_STALLED`]. A thread blocked inside the kernel (a frozen or
/// dead file system) can keep the process from ending until that call returns; systemd's stop
/// timeout covers that.
pub fn exit_stalled() {
    std::process::exit(EXIT_STALLED);
}

/// How often [`watch_acceptance`] looks.
const ACCEPTANCE_TICK: Duration = Duration::from_secs(1);

/// Keeps `tlsgate_queue_accepting` and with it `/readyz` on what [`Committer::accepts`] says
/// (issue 16 item 4: readiness says when the queue cannot take mail, so that a load balancer
/// sends mail elsewhere), checking every second until `shutdown`; logs each change.
pub async fn watch_acceptance(
    committer: Committer,
    metrics: Arc<Metrics>,
    dir: std::path::PathBuf,
    min_free: u64,
    shutdown: CancellationToken,
) {
    loop {
        let accepts = committer.accepts(crate::queue::available_space(&dir), min_free);
        let now = i64::from(accepts.is_ok());
        if now != metrics.queue_accepting.get() {
            match &accepts {
                Ok(()) => tracing::warn!("the queue takes mail again; /readyz answers 200"),
                Err(refusal) => tracing::error!(
                    reason = %refusal.reason,
                    "the queue cannot take mail; MAIL is answered 452/451 and /readyz 503"
                ),
            }
        }
        metrics.set_queue_refusal(accepts.err().map(|refusal| refusal.reason));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ACCEPTANCE_TICK) => {}
        }
    }
}
