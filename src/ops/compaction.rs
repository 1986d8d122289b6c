//! Queue compaction while the relay runs (issue 16 item 5: the queue's disk use follows what
//! is queued). redb reuses the pages of delivered messages but keeps its file at the largest
//! size the queue ever had; [`Store::compact`] gives that space back, but holds every queue
//! read and write while it works. So it is tried only when the queue is small, where
//! there is little to move: every [`EVERY`], when at most [`SMALL_QUEUE`] messages are
//! queued. The store itself skips the work when nothing was removed since the last time or
//! when little space is unused.

use crate::metrics::Metrics;
use crate::queue::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the queue's size is looked at.
pub const EVERY: Duration = Duration::from_secs(10);

/// Queues of at most this many messages are small enough to compact (a few MB to move:
/// milliseconds, far below `queue.stall_timeout`).
pub const SMALL_QUEUE: i64 = 1000;

/// Tries compaction every [`EVERY`] while the queue (the `tlsgate_queue_messages` gauge) is
/// small, until `shutdown`; runs it on the blocking pool and logs what it did.
pub async fn run(store: Arc<dyn Store>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if metrics.queue_messages.get() > SMALL_QUEUE {
            continue;
        }
        let store = store.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || store.compact()).await {
            Ok(Ok(true)) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "queue compacted: unused space given back to the file system"
            ),
            Ok(Ok(false)) => {}
            // The queue stays as it was; its space is still reused.
            Ok(Err(e)) => tracing::warn!(error = %e, "queue compaction failed"),
            Err(e) => tracing::warn!(error = %e, "queue compaction did not complete"),
        }
    }
}
