//! How an incremental snapshot cuts a table into partitions, and what each partition holds
//! (design: `docs/design/incremental-snapshots.md`).
//!
//! A partition is a set of rows named by a key; a snapshot reuses a partition of the previous one when
//! its key, row count and fingerprint are the same. The key follows the order rows were written in, so
//! that new rows land in partitions of their own whatever their event time: HitKeep's tables with a
//! time column are cut by month of that column (UTC), then into ranges of rows in write order within
//! each month (`rowid` less the month's first `rowid`); other tables into ranges of `rowid` alone.
//! Keys read `2026-11.3` (the fourth range of November 2026) or `rows.12`: one path component each.
//!
//! - **Why not event time alone:** new hits spread over the current month would change every day of
//!   it, and a month is ~8% of a year of rows.
//! - **Why not `rowid` alone:** DuckDB may renumber the rows after a `DELETE` and a `CHECKPOINT`
//!   (measured with DuckDB 1.5 in a table without an index, such as HitKeep 2.13's big tables; an
//!   archive run deletes old rows near the start), which would move every range of the table. Within a month rows keep their order, and a delete in
//!   another month shifts them all alike.
//!
//! Nothing here decides correctness: reuse is decided by content. Rows that move between ranges change
//! those ranges' fingerprints, and they are exported again; only the cost depends on the key. Keys,
//! counts and fingerprints must be read in the transaction that exports the rows.

use std::collections::BTreeMap;

use duckdb::Connection;
use hitkeep_data::{quote_ident, quote_literal, rows_fingerprint, timed_table};
use serde::{Deserialize, Serialize};

/// How a table is cut into partitions. Chosen when a table's chain starts and recorded with each of
/// its snapshots, so that a later rule never reinterprets an older snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum PartitionRule {
    /// Months of `column` (UTC), then ranges of `rows` rows in write order within each month.
    MonthRows {
        /// The time column.
        column: String,
        /// Rows per range.
        rows: u64,
    },
    /// Ranges of `rows` rows in write order.
    Rows {
        /// Rows per range.
        rows: u64,
    },
}

/// A table starting a chain is cut into about this many ranges, so that rewriting one costs little.
const RANGES_PER_TABLE: u64 = 64;

/// Ranges hold at least this many rows: fewer would make many small Parquet files (a row group is
/// 122,880 rows) and a manifest entry each.
const MIN_RANGE_ROWS: u64 = 1 << 17;

impl PartitionRule {
    /// The rule for `table` (of `rows` rows and these `columns`) when its chain starts: by month where
    /// HitKeep's table has its time column, with ranges of a power of two near 1/64 of its rows.
    pub(crate) fn starting(table: &str, rows: u64, columns: &[String]) -> PartitionRule {
        let rows = (rows / RANGES_PER_TABLE)
            .next_power_of_two()
            .max(MIN_RANGE_ROWS);
        match timed_table(table) {
            Some(timed) if columns.iter().any(|c| c == timed.column) => PartitionRule::MonthRows {
                column: timed.column.to_owned(),
                rows,
            },
            _ => PartitionRule::Rows { rows },
        }
    }

    /// `SELECT` of `table`'s `columns` with each row's partition key first, as `__part`.
    pub(crate) fn keyed_rows(&self, table: &str, columns: &[String]) -> String {
        let table = quote_ident(table);
        let listed = |prefix: &str| {
            columns
                .iter()
                .map(|c| format!("{prefix}{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            PartitionRule::Rows { rows } => format!(
                "SELECT 'rows.' || CAST(rowid // {rows} AS VARCHAR) AS __part, {} FROM {table}",
                listed("")
            ),
            // The months' first rows in a join (a few dozen rows), not a window over every row.
            PartitionRule::MonthRows { column, rows } => {
                let month = |of: &str| {
                    format!(
                        "coalesce(strftime(CAST({of}{} AS TIMESTAMP), '%Y-%m'), 'none')",
                        quote_ident(column)
                    )
                };
                format!(
                    "SELECT f.__month || '.' || CAST((t.rowid - f.__first) // {rows} AS VARCHAR) AS __part, {} \
                     FROM {table} t JOIN (SELECT {} AS __month, min(rowid) AS __first FROM {table} GROUP BY 1) f \
                     ON {} = f.__month",
                    listed("t."),
                    month(""),
                    month("t.")
                )
            }
        }
    }
}

/// What one partition holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionPrint {
    /// Rows.
    pub rows: u64,
    /// [`hitkeep_data::rows_fingerprint`] of every column, as a decimal integer.
    pub fingerprint: String,
}

/// The columns of `table` in the main schema, in order.
pub(crate) fn table_columns(conn: &Connection, table: &str) -> duckdb::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() \
         AND schema_name = 'main' AND table_name = ? ORDER BY column_index",
    )?;
    let columns = stmt.query_map([table], |r| r.get(0))?;
    columns.collect()
}

/// Every partition of `table` under `rule`, by key, with its rows and fingerprint: one scan.
pub(crate) fn partition_prints(
    conn: &Connection,
    table: &str,
    rule: &PartitionRule,
) -> duckdb::Result<BTreeMap<String, PartitionPrint>> {
    let columns = table_columns(conn, table)?;
    let exprs = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT __part, count(*), CAST({} AS VARCHAR) FROM ({}) GROUP BY __part",
        rows_fingerprint(&exprs),
        rule.keyed_rows(table, &columns)
    );
    let mut stmt = conn.prepare(&sql)?;
    let prints = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            PartitionPrint {
                rows: u64::try_from(r.get::<_, i64>(1)?).unwrap_or_default(),
                fingerprint: r.get(2)?,
            },
        ))
    })?;
    prints.collect()
}

/// `SELECT` of the rows of `table` in the partitions `keys`, without their key: what a changed
/// partition's export reads.
pub(crate) fn rows_in(
    table: &str,
    columns: &[String],
    rule: &PartitionRule,
    keys: &[&str],
) -> String {
    let keys = keys
        .iter()
        .map(|k| quote_literal(k))
        .collect::<Vec<_>>()
        .join(", ");
    let listed = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {listed} FROM ({}) WHERE __part IN ({keys})",
        rule.keyed_rows(table, columns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HitKeep-shaped `hits` table, rows written month by month as a server writes them:
    /// `per_month` rows in each of `months` months from 2026-01.
    fn hits(conn: &Connection, months: u32, per_month: u32) {
        conn.execute_batch(
            "CREATE TABLE hits (id UUID, site_id UUID, \"timestamp\" TIMESTAMPTZ, path VARCHAR, referrer VARCHAR)",
        )
        .unwrap();
        for month in 0..months {
            conn.execute_batch(&format!(
                "INSERT INTO hits SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
                 to_timestamp(epoch(DATE '2026-{:02}-01') + i * 10), '/p' || (i % 7), \
                 CASE WHEN i % 3 = 0 THEN NULL ELSE 'r' END FROM range({per_month}) t(i)",
                month + 1
            ))
            .unwrap();
        }
    }

    fn small_ranges() -> PartitionRule {
        PartitionRule::MonthRows {
            column: "timestamp".into(),
            rows: 1000,
        }
    }

    #[test]
    fn rules_cut_timed_tables_by_month_and_others_by_rows() {
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            PartitionRule::starting("hits", 16_000_000, &cols(&["id", "timestamp"])),
            PartitionRule::MonthRows {
                column: "timestamp".into(),
                rows: 1 << 18
            }
        );
        assert_eq!(
            PartitionRule::starting("hit_rollups_daily", 10, &cols(&["bucket"])),
            PartitionRule::MonthRows {
                column: "bucket".into(),
                rows: MIN_RANGE_ROWS
            }
        );
        assert_eq!(
            PartitionRule::starting("sites", 10, &cols(&["id"])),
            PartitionRule::Rows {
                rows: MIN_RANGE_ROWS
            }
        );
        // A timed table without its column (another schema): by rows, never a failing query.
        assert_eq!(
            PartitionRule::starting("hits", 10, &cols(&["id"])),
            PartitionRule::Rows {
                rows: MIN_RANGE_ROWS
            }
        );
        let recorded = serde_json::to_string(&small_ranges()).unwrap();
        assert_eq!(
            recorded,
            r#"{"rule":"month-rows","column":"timestamp","rows":1000}"#
        );
    }

    #[test]
    fn partitions_hold_every_row_once_by_month_then_write_order() {
        let conn = Connection::open_in_memory().unwrap();
        hits(&conn, 3, 2500);
        let prints = partition_prints(&conn, "hits", &small_ranges()).unwrap();
        let keys: Vec<&str> = prints.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "2026-01.0",
                "2026-01.1",
                "2026-01.2",
                "2026-02.0",
                "2026-02.1",
                "2026-02.2",
                "2026-03.0",
                "2026-03.1",
                "2026-03.2"
            ]
        );
        let rows: Vec<u64> = prints.values().map(|p| p.rows).collect();
        assert_eq!(rows, [1000, 1000, 500, 1000, 1000, 500, 1000, 1000, 500]);
        // The partitions' rows, read back by key, are the table's rows.
        let columns = table_columns(&conn, "hits").unwrap();
        let all: Vec<&str> = prints.keys().map(String::as_str).collect();
        let sql = format!(
            "SELECT count(*) FROM (SELECT * FROM hits EXCEPT ALL {})",
            rows_in("hits", &columns, &small_ranges(), &all)
        );
        let missing: i64 = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
        assert_eq!(missing, 0);
    }

    #[test]
    fn a_delete_in_one_month_leaves_the_other_months_partitions_as_they_were() {
        // After a delete and a checkpoint DuckDB may renumber the rows (1.5 did, in a table without
        // an index, measured) or keep their rowids (with an index, or as this build did). Both are
        // tested: the renumbering made certain by rewriting the table in rowid order.
        for renumbered in [false, true] {
            let conn = Connection::open_in_memory().unwrap();
            hits(&conn, 4, 150_000);
            let rule = PartitionRule::MonthRows {
                column: "timestamp".into(),
                rows: 1 << 15,
            };
            let before = partition_prints(&conn, "hits", &rule).unwrap();
            let rowid = || -> i64 {
                conn.query_row(
                    "SELECT min(rowid) FROM hits WHERE \"timestamp\" >= TIMESTAMPTZ '2026-02-01 00:00:00+00'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
            };
            let first_of_february = rowid();
            // What an archive run does: the oldest month goes.
            conn.execute_batch(
                "DELETE FROM hits WHERE \"timestamp\" < TIMESTAMPTZ '2026-02-01 00:00:00+00'",
            )
            .unwrap();
            if renumbered {
                conn.execute_batch(
                    "CREATE TABLE kept AS SELECT * FROM hits ORDER BY rowid; DROP TABLE hits; \
                     ALTER TABLE kept RENAME TO hits",
                )
                .unwrap();
            }
            assert_eq!(rowid() < first_of_february, renumbered);
            let after = partition_prints(&conn, "hits", &rule).unwrap();
            let (gone, kept): (Vec<_>, Vec<_>) =
                before.iter().partition(|(k, _)| k.starts_with("2026-01."));
            assert!(!gone.is_empty());
            assert!(gone.iter().all(|(k, _)| !after.contains_key(*k)));
            for (key, print) in kept {
                assert_eq!(after.get(key), Some(print), "partition {key} changed");
            }
            assert_eq!(after.len(), before.len() - gone.len());
        }
    }

    #[test]
    fn new_rows_of_any_time_in_a_month_land_in_its_last_ranges() {
        let conn = Connection::open_in_memory().unwrap();
        hits(&conn, 2, 2500);
        let before = partition_prints(&conn, "hits", &small_ranges()).unwrap();
        // Late rows for early in February, and one change in January.
        conn.execute_batch(
            "INSERT INTO hits SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
             to_timestamp(epoch(DATE '2026-02-01')), '/late', NULL FROM range(700);
             UPDATE hits SET path = '/changed' WHERE rowid = 10",
        )
        .unwrap();
        let after = partition_prints(&conn, "hits", &small_ranges()).unwrap();
        let changed: Vec<&str> = after
            .iter()
            .filter(|(k, p)| before.get(*k) != Some(p))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(changed, ["2026-01.0", "2026-02.2", "2026-02.3"]);
    }

    #[test]
    fn every_table_of_both_layouts_is_cut_whole() {
        use hitkeep_data::demo::{DemoOptions, generate};
        use hitkeep_data::{DataLayout, OpenMode, TenantLayout};
        for release in [TenantLayout::PreSplit, TenantLayout::Split] {
            let dir = tempfile::tempdir().unwrap();
            let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
            let summary =
                generate(&layout, &DemoOptions::new(3000, 1).with_layout(release)).unwrap();
            let mut databases = vec![layout.db_path.clone()];
            let tenants = summary.tenants.iter().chain([&summary.default_tenant]);
            databases.extend(tenants.map(|t| layout.tenant_db(*t)).filter(|p| p.exists()));
            let mut timed = 0;
            for db in databases {
                let conn = layout.open(&db, OpenMode::Existing).unwrap();
                for (_, table) in hitkeep_data::user_tables(&conn).unwrap() {
                    let columns = table_columns(&conn, &table).unwrap();
                    let count: i64 = conn
                        .query_row(
                            &format!("SELECT count(*) FROM {}", quote_ident(&table)),
                            [],
                            |r| r.get(0),
                        )
                        .unwrap();
                    let rule = PartitionRule::starting(&table, count as u64, &columns);
                    if matches!(rule, PartitionRule::MonthRows { .. }) {
                        timed += 1;
                    }
                    let prints = partition_prints(&conn, &table, &rule).unwrap();
                    let whole: i128 = conn
                        .query_row(
                            &format!(
                                "SELECT coalesce({}, 0)::VARCHAR FROM {}",
                                rows_fingerprint(
                                    &columns
                                        .iter()
                                        .map(|c| quote_ident(c))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                                quote_ident(&table)
                            ),
                            [],
                            |r| r.get::<_, String>(0),
                        )
                        .unwrap()
                        .parse()
                        .unwrap();
                    let rows: u64 = prints.values().map(|p| p.rows).sum();
                    let sum: i128 = prints
                        .values()
                        .map(|p| p.fingerprint.parse::<i128>().unwrap())
                        .sum();
                    assert_eq!(rows, count as u64, "{release:?} {table}: rows");
                    assert_eq!(sum, whole, "{release:?} {table}: fingerprints");
                }
            }
            assert!(timed >= 10, "{release:?}: only {timed} tables cut by month");
        }
    }
}
