//! The tables that retention counts, exports and deletes (hitkeep-data's one list), and how each
//! one's cutoff is written.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The tables retention applies to: HitKeep's tables with a time column, one list for every crate.
pub use hitkeep_data::{Grain, TIMED_TABLES as TABLES, TimedTable as ArchiveTable};

/// The cutoff instant, computed once per site and written as SQL literals: the same values serve count,
/// export and delete. Literals, not `now() - INTERVAL`, because that needs the ICU extension and would be
/// re-evaluated per statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoff(Timestamp);

impl Cutoff {
    /// `now - days`, truncated to the microsecond (DuckDB's precision).
    /// `None` when the window reaches before any representable time: then nothing has expired.
    pub fn days_before(now: Timestamp, days: u32) -> Option<Cutoff> {
        let micros = i64::from(days)
            .checked_mul(86_400_000_000)
            .and_then(|w| now.as_microsecond().checked_sub(w))?;
        Timestamp::from_microsecond(micros).ok().map(Cutoff)
    }

    /// The cutoff at exactly `instant`.
    pub fn at(instant: Timestamp) -> Cutoff {
        Cutoff(instant)
    }

    /// The instant.
    pub fn instant(self) -> Timestamp {
        self.0
    }

    /// The SQL bound for `grain`: rows with `column < bound` have expired entirely.
    pub fn bound(self, grain: Grain) -> String {
        let utc = self.0.to_zoned_datetime(TimeZone::UTC);
        match grain {
            Grain::Instant => format!(
                "'{}'::TIMESTAMPTZ",
                utc.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
            ),
            Grain::Hour => format!("'{}'::TIMESTAMPTZ", utc.strftime("%Y-%m-%d %H:00:00+00")),
            Grain::Day => format!("DATE '{}'", utc.strftime("%Y-%m-%d")),
            Grain::Month => format!("DATE '{}'", utc.strftime("%Y-%m-01")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_keep_partial_periods() {
        let now: Timestamp = "2026-11-25T13:45:30.1234567Z".parse().unwrap();
        let c = Cutoff::days_before(now, 30).unwrap();
        assert_eq!(
            Cutoff::days_before(now, u32::MAX),
            None,
            "a 'forever' window expires nothing"
        );
        assert_eq!(
            c.bound(Grain::Instant),
            "'2026-10-26 13:45:30.123456+00'::TIMESTAMPTZ"
        );
        assert_eq!(
            c.bound(Grain::Hour),
            "'2026-10-26 13:00:00+00'::TIMESTAMPTZ"
        );
        assert_eq!(c.bound(Grain::Day), "DATE '2026-10-26'");
        assert_eq!(c.bound(Grain::Month), "DATE '2026-10-01'");
    }
}
