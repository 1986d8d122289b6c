//! Telling the service manager where the relay is (issue 14 item 5): systemd's `Type=notify`
//! protocol (sd_notify(3)) through the sd-notify crate. Each call is a no-op when the process
//! was not started by systemd (`NOTIFY_SOCKET` unset), so `serve` makes them unconditionally.
//!
//! `READY=1` is sent only after every listener is bound and the queue is open, so that
//! `systemctl start` returns when mail can be accepted and units ordered after tlsgate start
//! against a relay that answers. A failure to notify is logged, never fatal: the relay works
//! without a service manager.

use sd_notify::NotifyState;

/// `READY=1` plus a status line (shown by `systemctl status`): the relay accepts mail.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time systemd 253+ requires, before a SIGHUP reload;
/// follow it with [`notify_ready`] when the reload is done.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "could not read the monotonic clock for sd_notify"),
    }
}

/// `STOPPING=1`: the relay is draining sessions and closing the queue.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager (sd_notify)");
    }
}
