//! The retry schedule (T6): when the next attempt is due, and when a message expires or its
//! sender is owed a delay warning. Pure arithmetic on Unix seconds, unit tested.

use std::time::Duration;

/// Unix second of the next attempt after `attempts` failed ones. The schedule's waits are used
/// in order; the last one repeats.
pub fn next_attempt(schedule: &[Duration], attempts: u32, now: u64) -> u64 {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let wait = schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(300));
    now.saturating_add(wait.as_secs().max(1))
}

/// Has a message that arrived at `received_at` stayed longer than `limit`?
pub fn older_than(received_at: u64, limit: Duration, now: u64) -> bool {
    now.saturating_sub(received_at) >= limit.as_secs()
}

/// The Unix second at which a message that arrived at `received_at` expires.
pub fn expires_at(received_at: u64, expiry: Duration) -> u64 {
    received_at.saturating_add(expiry.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        ["1m", "5m", "15m"]
            .iter()
            .map(|s| humantime::parse_duration(s).unwrap())
            .collect()
    }

    #[test]
    fn uses_the_schedule_in_order_then_repeats_the_last_wait() {
        let s = schedule();
        assert_eq!(next_attempt(&s, 1, 1000), 1060);
        assert_eq!(next_attempt(&s, 2, 1000), 1300);
        assert_eq!(next_attempt(&s, 3, 1000), 1900);
        assert_eq!(next_attempt(&s, 9, 1000), 1900);
        // Attempt counts start at 1; 0 is treated as the first.
        assert_eq!(next_attempt(&s, 0, 1000), 1060);
    }

    #[test]
    fn expiry_and_warning_thresholds() {
        let day = Duration::from_secs(86_400);
        assert!(!older_than(1000, day, 1000 + 86_399));
        assert!(older_than(1000, day, 1000 + 86_400));
        assert_eq!(expires_at(1000, day), 87_400);
    }
}
