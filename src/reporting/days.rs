//! The durable per-day counters both aggregate reports keep: one [`Day`] per UTC day, each
//! with the counts of every domain the report goes to, held in memory under a short lock and
//! written to [`DayFiles`] by a flusher. DMARC (RFC 7489 section 7.2: one report per author
//! domain and day) and TLS reporting (RFC 8460 section 4: one report per policy domain and
//! day) count different things, so [`DayStore`] is generic over what one domain's day holds
//! ([`DomainCounts`]); keeping, pruning and flushing the days is the same for both.

use super::{day_name, CountersError, DayFiles, SendState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How often changed counters are written to disk: what a SIGKILL can lose at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Days kept on disk at most, their reports sent or not (the sending job gives up on a
/// report long before: [`super::daily::MAX_TRIES`]).
pub const KEEP_DAYS: i64 = 7;

/// What one domain's counts for one day are, as far as keeping and sending them goes: they
/// carry where the day's report to the domain stands.
pub trait DomainCounts:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Where the day's report to this domain stands.
    fn report(&self) -> &SendState;

    /// The same, to update.
    fn report_mut(&mut self) -> &mut SendState;
}

/// One UTC day: the content of one day file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day<D> {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// By the domain the report is about (author domain, policy domain).
    pub domains: BTreeMap<String, D>,
}

/// Remembers that a bound was hit on a day, so that it is logged once a day rather than for
/// every message past it.
pub struct OncePerDay<'a> {
    warned: &'a mut Option<i64>,
    day: i64,
}

impl OncePerDay<'_> {
    /// True the first time it is asked for its day (then log), false after.
    pub fn first(&mut self) -> bool {
        let first = *self.warned != Some(self.day);
        *self.warned = Some(self.day);
        first
    }
}

/// What [`DayStore::count`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Counted in the domain's day.
    Yes,
    /// Not counted: the day has as many domains as it may. `first` is true the first time a
    /// bound is hit that day (the caller logs it then).
    TooManyDomains {
        /// First time that day.
        first: bool,
    },
}

struct State<D> {
    days: BTreeMap<i64, Day<D>>,
    /// Days changed since the last flush.
    dirty: BTreeSet<i64>,
    /// Days removed since the last flush (their files go).
    removed: BTreeSet<i64>,
    /// A bound was hit on this day (logged once a day).
    warned: Option<i64>,
}

/// The recorder's memory and its day files: every day kept, what changed since the last
/// flush, and the files it goes to.
pub struct DayStore<D> {
    /// `DMARC` or `TLS`, for log lines.
    name: &'static str,
    files: DayFiles,
    state: Mutex<State<D>>,
    /// Held for a whole flush, so that two flushes never write one file in the wrong order.
    flushing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters that are still consistent numbers.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: DomainCounts> DayStore<D> {
    /// Opens (creates) `dir` and reads the day files in it, each at most `max_day_file`
    /// bytes. A file that is not a day file tlsgate wrote is skipped with a warning (kept
    /// for the administrator to look at). `name` (`DMARC`, `TLS`) names the reports in log
    /// lines.
    pub fn open_files(
        dir: &Path,
        name: &'static str,
        max_day_file: u64,
    ) -> Result<DayStore<D>, CountersError> {
        let what = format!("{name} report");
        let (files, days) = DayFiles::open(dir, max_day_file, &what)?;
        Ok(DayStore {
            name,
            files,
            state: Mutex::new(State {
                days,
                dirty: BTreeSet::new(),
                removed: BTreeSet::new(),
                warned: None,
            }),
            flushing: Mutex::new(()),
        })
    }

    /// `DMARC` or `TLS`: the reports' name in log lines.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Counts into `domain`'s entry of `day` with `count` (a new domain starts from
    /// `D::default()`), and marks the day for the next flush. A domain new to the day is not
    /// counted once the day has `max_domains` (a bound on memory and on the day file whatever
    /// the traffic). `count` gets a [`OncePerDay`] for bounds of its own.
    pub fn count(
        &self,
        day: i64,
        domain: &str,
        max_domains: usize,
        count: impl FnOnce(&mut D, &mut OncePerDay<'_>),
    ) -> Counted {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let entry = state.days.entry(day).or_insert_with(|| Day {
            day: day_name(day),
            domains: BTreeMap::new(),
        });
        let mut once = OncePerDay {
            warned: &mut state.warned,
            day,
        };
        if !entry.domains.contains_key(domain) && entry.domains.len() >= max_domains {
            return Counted::TooManyDomains {
                first: once.first(),
            };
        }
        count(
            entry.domains.entry(domain.to_string()).or_default(),
            &mut once,
        );
        state.dirty.insert(day);
        Counted::Yes
    }

    /// A copy of every day kept (for `… show` and the sending job).
    pub fn days(&self) -> BTreeMap<i64, Day<D>> {
        lock(&self.state).days.clone()
    }

    /// Updates the report state of `domain` on `day` (the sending job); written at the next
    /// flush. Nothing happens when the day or the domain is not kept.
    pub fn update_report(&self, day: i64, domain: &str, update: impl FnOnce(&mut SendState)) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        if let Some(report) = state
            .days
            .get_mut(&day)
            .and_then(|d| d.domains.get_mut(domain))
            .map(|d| d.report_mut())
        {
            update(report);
            state.dirty.insert(day);
        }
    }

    /// Removes the days before `today` whose reports are all finished, and every day older
    /// than [`KEEP_DAYS`].
    pub fn prune(&self, today: i64) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let gone: Vec<i64> = state
            .days
            .iter()
            .filter(|(number, day)| {
                **number < today - KEEP_DAYS
                    || (**number < today && day.domains.values().all(|d| d.report().finished))
            })
            .map(|(number, _)| *number)
            .collect();
        for number in gone {
            state.days.remove(&number);
            state.dirty.remove(&number);
            state.removed.insert(number);
        }
    }

    /// Writes every changed day (atomically, fsynced) and removes the files of pruned days.
    /// Blocking: run it off the async threads. A day that could not be written stays marked
    /// and is tried again at the next flush; the first error is returned.
    pub fn flush(&self) -> Result<(), CountersError> {
        let _one_at_a_time = lock(&self.flushing);
        let (changed, removed) = {
            let mut state = lock(&self.state);
            let dirty = std::mem::take(&mut state.dirty);
            let removed = std::mem::take(&mut state.removed);
            let changed: Vec<(i64, Day<D>)> = dirty
                .into_iter()
                .filter_map(|n| state.days.get(&n).map(|d| (n, d.clone())))
                .collect();
            (changed, removed)
        };
        let mut first_error = None;
        for (number, day) in &changed {
            if let Err(e) = self.files.write(*number, day) {
                lock(&self.state).dirty.insert(*number);
                first_error.get_or_insert(e);
            }
        }
        for number in removed {
            if let Err(e) = self.files.remove(number) {
                lock(&self.state).removed.insert(number);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A domain's day that counts hits: the smallest [`DomainCounts`], for tests here and in
    /// [`super::super::daily`].
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Hits {
        pub(crate) hits: u32,
        pub(crate) report: SendState,
    }

    impl DomainCounts for Hits {
        fn report(&self) -> &SendState {
            &self.report
        }

        fn report_mut(&mut self) -> &mut SendState {
            &mut self.report
        }
    }

    /// The domain bound refuses new domains only, and says so once a day.
    #[test]
    fn the_domain_bound_is_reported_once_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let store = DayStore::<Hits>::open_files(dir.path(), "test", 1 << 20).unwrap();
        let hit = |d: &mut Hits, _: &mut OncePerDay<'_>| d.hits += 1;
        assert_eq!(store.count(3, "a.test", 1, hit), Counted::Yes);
        assert_eq!(store.count(3, "a.test", 1, hit), Counted::Yes);
        assert_eq!(
            store.count(3, "b.test", 1, hit),
            Counted::TooManyDomains { first: true }
        );
        assert_eq!(
            store.count(3, "c.test", 1, hit),
            Counted::TooManyDomains { first: false }
        );
        assert_eq!(store.count(4, "b.test", 1, hit), Counted::Yes);
        assert_eq!(
            store.count(4, "c.test", 1, hit),
            Counted::TooManyDomains { first: true }
        );
        let days = store.days();
        assert_eq!(days[&3].day, "1970-01-04");
        assert_eq!(days[&3].domains.keys().collect::<Vec<_>>(), ["a.test"]);
        assert_eq!(days[&3].domains["a.test"].hits, 2);
    }

    /// Unfinished past days stay until `KEEP_DAYS`; finished ones go at once; the files
    /// follow at the flush.
    #[test]
    fn pruned_days_lose_their_files_at_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = DayStore::<Hits>::open_files(dir.path(), "test", 1 << 20).unwrap();
        let hit = |d: &mut Hits, _: &mut OncePerDay<'_>| d.hits += 1;
        store.count(1, "a.test", 10, hit);
        store.count(2, "a.test", 10, hit);
        store.update_report(1, "a.test", |r| r.finished = true);
        // Not kept: nothing happens.
        store.update_report(9, "a.test", |r| r.finished = true);
        store.flush().unwrap();
        assert!(dir.path().join("1970-01-02.json").exists());
        store.prune(3);
        store.flush().unwrap();
        assert!(!dir.path().join("1970-01-02.json").exists());
        assert!(dir.path().join("1970-01-03.json").exists());
        let reopened = DayStore::<Hits>::open_files(dir.path(), "test", 1 << 20).unwrap();
        assert_eq!(reopened.days().keys().collect::<Vec<_>>(), [&2]);
        reopened.prune(2 + KEEP_DAYS + 1);
        reopened.flush().unwrap();
        assert!(!dir.path().join("1970-01-03.json").exists());
    }
}
