//! The one list of tables that retention counts, exports and deletes, and how each one's cutoff is
//! written. HitKeep Go kept three lists and they drifted apart (a table was counted but never pruned).

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How a table's time column compares with the cutoff instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    /// A point in time (`timestamp`): rows strictly before the cutoff go.
    Instant,
    /// An hour bucket (TIMESTAMPTZ): only hours that end at or before the cutoff go.
    Hour,
    /// A day (`date`, daily buckets): only days that end at or before the cutoff go.
    Day,
    /// A month bucket (DATE, first of month): only months that end at or before the cutoff go.
    Month,
}

/// A table retention applies to.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveTable {
    /// Table name.
    pub name: &'static str,
    /// Its time column.
    pub column: &'static str,
    /// How the column compares with the cutoff.
    pub grain: Grain,
}

const fn t(name: &'static str, column: &'static str, grain: Grain) -> ArchiveTable {
    ArchiveTable {
        name,
        column,
        grain,
    }
}

/// Every table, in HitKeep's order (2.13: `search_console_facts` and the twelve rollups joined the ten
/// raw and imported tables). A table an older schema lacks is skipped where it is used.
pub const TABLES: &[ArchiveTable] = &[
    t("hits", "timestamp", Grain::Instant),
    t("events", "timestamp", Grain::Instant),
    t("web_vitals", "timestamp", Grain::Instant),
    t("ai_fetches", "timestamp", Grain::Instant),
    t("qr_code_opens", "timestamp", Grain::Instant),
    t("imported_traffic_daily", "date", Grain::Day),
    t("imported_dimension_daily", "date", Grain::Day),
    t("imported_event_daily", "date", Grain::Day),
    t("imported_event_dimensions_daily", "date", Grain::Day),
    t("imported_event_properties_daily", "date", Grain::Day),
    t("search_console_facts", "date", Grain::Day),
    t("hit_rollups_hourly", "bucket", Grain::Hour),
    t("hit_rollups_daily", "bucket", Grain::Day),
    t("hit_rollups_monthly", "bucket", Grain::Month),
    t("session_rollups_hourly", "bucket", Grain::Hour),
    t("session_rollups_daily", "bucket", Grain::Day),
    t("session_rollups_monthly", "bucket", Grain::Month),
    t("goal_rollups_hourly", "bucket", Grain::Hour),
    t("goal_rollups_daily", "bucket", Grain::Day),
    t("goal_rollups_monthly", "bucket", Grain::Month),
    t("funnel_rollups_hourly", "bucket", Grain::Hour),
    t("funnel_rollups_daily", "bucket", Grain::Day),
    t("funnel_rollups_monthly", "bucket", Grain::Month),
];

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

    #[test]
    fn one_list_of_hitkeeps_twenty_three_tables() {
        assert_eq!(TABLES.len(), 23);
        let mut names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 23);
        let scf = TABLES.iter().position(|t| t.name == "search_console_facts");
        assert_eq!(scf, Some(10), "HitKeep's 11th source, cut off by day");
        assert_eq!(TABLES[10].grain, Grain::Day);
    }
}
