//! The audit log's retention (S1): whole files older than `audit.retention_days` are removed
//! at start and every six hours.

use crate::audit::AuditLog;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often retention runs after the first time (at start).
const EVERY: Duration = Duration::from_secs(6 * 3600);

/// Applies retention now and every six hours until `shutdown`, off the async threads.
pub async fn apply_audit_retention(log: Arc<AuditLog>, shutdown: CancellationToken) {
    loop {
        let log2 = log.clone();
        match tokio::task::spawn_blocking(move || {
            log2.apply_retention(std::time::SystemTime::now())
        })
        .await
        {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(files = removed.len(), "old audit files removed (retention)")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "audit retention failed"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
