//! Dates and times in the formats tlsgate writes and reads, over the `time` crate: RFC 3339
//! UTC for audit entries (S1), RFC 5322 dates for `Received:` and DSNs, the UTC calendar
//! date that names audit files, and the domain list's "Dato innmeldt" (T10) as a day count.
//!
//! Every function takes or returns [`SystemTime`]; instants before 1970 count as the epoch and
//! instants past year 9999 as its last nanosecond, so formatting never fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc2822;
use time::format_description::BorrowedFormatItem;
use time::macros::{date, datetime, format_description};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: milliseconds, always UTC (the audit log's `time` field).
const RFC3339_MILLIS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// What [`parse_rfc3339`] reads before the final `Z`: `T` or `t`, an optional fraction.
const RFC3339_UTC_BODY: &[BorrowedFormatItem<'static>] = format_description!(
    version = 2,
    "[year]-[month]-[day][first [T] [t]][hour]:[minute]:[second][optional [.[subsecond digits:1+]]]"
);

/// The last instant with a four-digit year: later ones are written as this one.
const LATEST: OffsetDateTime = datetime!(9999-12-31 23:59:59.999_999_999 UTC);

/// `t` in UTC, clamped to 1970-01-01 … 9999-12-31.
fn utc(t: SystemTime) -> OffsetDateTime {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i128::try_from(since_epoch.as_nanos())
        .ok()
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .map_or(LATEST, |at| at.min(LATEST))
}

/// RFC 3339 UTC with milliseconds, e.g. `2023-11-14T22:13:20.123Z` (truncated, not rounded).
pub fn format_rfc3339(t: SystemTime) -> String {
    // Cannot fail: every component is known for an OffsetDateTime and a String takes any text.
    utc(t).format(RFC3339_MILLIS).unwrap_or_default()
}

/// Reads what [`format_rfc3339`] writes, with any fraction of up to nine digits or none:
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, UTC only, from 1970 on. `time`'s calendar checks the
/// date; the shapes its parser would also take and tlsgate never writes (a sign before the
/// year, ten or more fraction digits) are refused first.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let body = s.strip_suffix(['Z', 'z'])?;
    let fraction = body.split_once('.').map_or("", |(_, fraction)| fraction);
    if !body.starts_with(|c: char| c.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let at = PrimitiveDateTime::parse(body, RFC3339_UTC_BODY)
        .ok()?
        .assume_utc();
    let since_epoch = at - OffsetDateTime::UNIX_EPOCH;
    let since_epoch = Duration::try_from(since_epoch).ok()?;
    UNIX_EPOCH.checked_add(since_epoch)
}

/// RFC 5322 3.3 date-time with a numeric zone, e.g. `Tue, 14 Nov 2023 22:13:20 +0000` (the
/// obsolete `GMT` is never written).
pub fn rfc5322(t: SystemTime) -> String {
    // Cannot fail: RFC 2822 formatting only refuses years before 1900.
    utc(t).format(&Rfc2822).unwrap_or_default()
}

/// The UTC calendar date of `t` as the number `YYYYMMDD` (audit file names and rotation).
pub fn utc_date_number(t: SystemTime) -> u32 {
    let date = utc(t).date();
    let year = u32::try_from(date.year()).unwrap_or(0);
    year * 10_000 + u32::from(u8::from(date.month())) * 100 + u32::from(date.day())
}

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day`; `None` when there
/// is no such date.
pub fn days_since_epoch(year: i32, month: u8, day: u8) -> Option<i64> {
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(i64::from(
        date.to_julian_day() - date!(1970 - 01 - 01).to_julian_day(),
    ))
}

/// The date `days` after 1970-01-01 as `YYYY-MM-DD` (the domain list's `Dato innmeldt`, kept
/// as [`days_since_epoch`]); `None` outside the calendar's range.
pub fn date_of_days(days: i64) -> Option<String> {
    let julian = i64::from(date!(1970 - 01 - 01).to_julian_day()).checked_add(days)?;
    let date = Date::from_julian_day(i32::try_from(julian).ok()?).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_since_the_epoch_read_back_as_dates() {
        assert_eq!(date_of_days(0).as_deref(), Some("1970-01-01"));
        let joined = days_since_epoch(2026, 1, 31).expect("a date");
        assert_eq!(date_of_days(joined).as_deref(), Some("2026-01-31"));
        assert_eq!(date_of_days(-1).as_deref(), Some("1969-12-31"));
        assert_eq!(date_of_days(i64::MAX), None);
    }

    fn at(secs: u64, millis: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, millis * 1_000_000)
    }

    #[test]
    fn rfc5322_dates_have_a_numeric_zone_and_two_digit_days() {
        // RFC 5322 3.3: `day` is one or two digits, the zone `+0000` (4.3: `GMT` is obsolete).
        assert_eq!(
            rfc5322(at(1_700_000_000, 0)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(rfc5322(at(0, 0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322(UNIX_EPOCH - Duration::from_secs(1)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn far_future_instants_are_clamped_not_refused() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_rfc3339(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(utc_date_number(far), 99_991_231);
    }

    #[test]
    fn calendar_dates_and_day_counts() {
        assert_eq!(days_since_epoch(1970, 1, 1), Some(0));
        assert_eq!(days_since_epoch(2000, 3, 1), Some(11_017));
        assert_eq!(days_since_epoch(2000, 2, 29), Some(11_016));
        assert_eq!(days_since_epoch(2023, 2, 29), None);
        assert_eq!(days_since_epoch(2024, 13, 1), None);
        assert_eq!(utc_date_number(at(951_782_400, 0)), 20_000_229);
        assert_eq!(utc_date_number(at(951_868_799, 999)), 20_000_229);
        assert_eq!(utc_date_number(at(951_868_800, 0)), 20_000_301);
    }

    #[test]
    fn lower_case_separators_are_read() {
        assert_eq!(
            parse_rfc3339("2023-11-14t22:13:20.5z"),
            Some(at(1_700_000_000, 500))
        );
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(at(951_782_400, 5)),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(
            format_rfc3339(at(951_868_799, 999)),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339(at(1_700_000_000, 123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_rfc3339(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_and_round_trips() {
        for secs in [
            0,
            68_169_600,
            951_782_400,
            1_700_000_000,
            4_107_542_399,
            253_402_300_799,
        ] {
            for millis in [0, 1, 500, 999] {
                let t = at(secs, millis);
                assert_eq!(
                    parse_rfc3339(&format_rfc3339(t)),
                    Some(t),
                    "{secs}.{millis}"
                );
            }
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(at(1_700_000_000, 0))
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+01:00",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.1234567890Z",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:2xZ",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T22:13:20.12é",
            "+023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
