//! The one list of HitKeep's tables with a time column, and the fingerprint of a set of rows. Retention
//! (hitkeep-archive) counts, exports and deletes by this list; incremental snapshots (hitkeep-backup)
//! cut these tables by time. HitKeep Go kept three lists and they drifted apart (a table was counted
//! but never pruned).

/// How a table's time column is typed and what a period of it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    /// A point in time (`timestamp`, TIMESTAMPTZ).
    Instant,
    /// An hour bucket (TIMESTAMPTZ, on the hour).
    Hour,
    /// A day (`date`, or a daily bucket: DATE).
    Day,
    /// A month bucket (DATE, first of month).
    Month,
}

/// A HitKeep table with a time column.
#[derive(Clone, Copy, Debug)]
pub struct TimedTable {
    /// Table name.
    pub name: &'static str,
    /// Its time column.
    pub column: &'static str,
    /// What the column holds.
    pub grain: Grain,
}

const fn t(name: &'static str, column: &'static str, grain: Grain) -> TimedTable {
    TimedTable {
        name,
        column,
        grain,
    }
}

/// Every table with a time column, in HitKeep's order (2.13: `search_console_facts` and the twelve
/// rollups joined the ten raw and imported tables). A table an older schema lacks is skipped where it
/// is used.
pub const TIMED_TABLES: &[TimedTable] = &[
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

/// The table of that name in [`TIMED_TABLES`].
pub fn timed_table(name: &str) -> Option<&'static TimedTable> {
    TIMED_TABLES.iter().find(|t| t.name == name)
}

/// The SQL aggregate of an order-independent fingerprint of rows: the sum of a 64-bit hash per row
/// of `exprs` (a select list), as a HUGEINT so it never overflows. With the row count, equal
/// fingerprints mean the same rows, duplicates included, but for a chance of about 2^-64.
///
/// The row hash is hashed again: DuckDB combines a row's column hashes by shift and XOR without a
/// final mix, and summed, such values can cancel for structured changes (a value swapped between two
/// rows keeps the sum with a chance near 10^-8, not 2^-64). The second hash mixes every bit.
pub fn rows_fingerprint(exprs: &str) -> String {
    format!("sum({}::HUGEINT)", row_hash(exprs))
}

/// The SQL of one row's hash in [`rows_fingerprint`], for a query that sums it later (per group, or
/// after a join that should not carry every column).
pub fn row_hash(exprs: &str) -> String {
    format!("hash(hash({exprs}))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_list_of_hitkeeps_twenty_three_timed_tables() {
        assert_eq!(TIMED_TABLES.len(), 23);
        let mut names: Vec<_> = TIMED_TABLES.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 23);
        let scf = TIMED_TABLES
            .iter()
            .position(|t| t.name == "search_console_facts");
        assert_eq!(scf, Some(10), "HitKeep's 11th source, cut off by day");
        assert_eq!(TIMED_TABLES[10].grain, Grain::Day);
        assert_eq!(timed_table("hits").map(|t| t.column), Some("timestamp"));
        assert!(timed_table("sites").is_none());
    }
}
