//! Progress of `tlsgate domains check` on standard error (issue 15 item 1: a check a person
//! can follow): domains done of the total and failures so far, drawn by indicatif only when
//! standard error is a terminal, so that logs, pipes and `--json` output get no bar
//! characters or carriage returns.

use super::{DomainReport, Verdict};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The progress bar of one check; hidden (and silent) when standard error is no terminal.
pub struct Progress {
    /// Drawn to standard error, or hidden.
    bar: ProgressBar,
    /// Domains that failed so far, for the bar's message.
    failed: AtomicUsize,
}

impl Progress {
    /// A bar for `total` domains, shown when standard error is a terminal.
    pub fn on_stderr(total: usize) -> Progress {
        Progress::new(total, std::io::stderr().is_terminal())
    }

    /// A bar for `total` domains, drawn to standard error when `visible`, else hidden.
    pub fn new(total: usize, visible: bool) -> Progress {
        let bar = if visible {
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        // The template is a constant: it cannot fail to parse, but the plain bar is a fine
        // fallback should it ever.
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} domains checked, {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("0 failed");
        if visible {
            // The elapsed time moves while slow hosts time out.
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            failed: AtomicUsize::new(0),
        }
    }

    /// One more domain done (the callback of
    /// [`check_domains_with_progress`](super::check_domains_with_progress)).
    pub fn done(&self, report: &DomainReport) {
        if report.verdict == Verdict::Fail {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.bar
            .set_message(format!("{} failed", self.failed.load(Ordering::Relaxed)));
        self.bar.inc(1);
    }

    /// Stops the bar and leaves its last state on the terminal, ending its line so that what
    /// follows starts on a line of its own (indicatif leaves the cursor after the bar).
    pub fn finish(&self) {
        self.bar.finish();
        if !self.bar.is_hidden() {
            eprintln!();
        }
    }
}
