//! How an incremental snapshot cuts a table into partitions, and what each partition holds
//! (design: `docs/design/incremental-snapshots.md`).
//!
//! A partition is a set of rows named by a key; a snapshot reuses a partition of the previous one when
//! its key, row count and fingerprint are the same. The key follows the order rows were written in, so
//! that new rows land in partitions of their own whatever their event time: HitKeep's tables with a
//! time column are cut by month of that column (UTC), then into ranges of rows in write order within
//! each month (by how many of the month's rows come before a row); other tables into ranges of
//! `rowid` alone.
//! Keys read `2026-11.3` (the fourth range of November 2026), `none.0` (rows without a time),
//! `rows.12` or `all`: one path component each.
//!
//! - **Why not event time alone:** new hits spread over the current month would change every day of
//!   it, and a month is ~8% of a year of rows.
//! - **Why counted, not measured in rowids:** a month whose rows are spread among other months'
//!   (rows not written in time order: an import, and the demo's data before 2026-12-05) spans far
//!   more rowids than it has rows, and ranges of `rows` rowids cut it into dozens of slivers (775
//!   files for 4M such demo hits, against ~45 for the same rows in time order). Scaling the step to
//!   a month's average density (tried) made each range of appended rows, which are dense, dozens of
//!   times too big, rewritten whole by every cycle. Counting the month's rows before a row (per bucket of 1/16 of a range's
//!   rowids) gives ranges of about `rows` rows whatever the order, and appended rows, however late
//!   their time, only ever extend their month's last ranges.
//! - **Why not `rowid` alone:** DuckDB may renumber the rows after a `DELETE` and a `CHECKPOINT`
//!   (measured with DuckDB 1.5 in a table without an index, such as HitKeep 2.13's big tables; an
//!   archive run deletes old rows near the start), which would move every range of the table. Within
//!   a month rows keep their order, and a delete in another month shifts them all alike.
//!
//! Nothing here decides correctness: reuse is decided by content. Rows that move between ranges change
//! those ranges' fingerprints, and they are exported again; only the cost depends on the key. Keys,
//! counts and fingerprints must be read in the transaction that exports the rows: the export selects
//! rows by the months' first rowids and the buckets a [`Cutting`] read. Months are UTC because the bundled DuckDB has no ICU: with
//! ICU loaded they would follow its `TimeZone`, which moves keys (a cost, not an error).

use std::collections::BTreeMap;

use duckdb::Connection;
use hitkeep_data::{quote_ident, row_hash, rows_fingerprint, timed_table};
use serde::{Deserialize, Serialize};

/// How a table is cut into partitions. Chosen when a table's chain starts and recorded with each of
/// its snapshots, so that a later rule never reinterprets an older snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PartitionRule {
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
    /// The whole table, one partition: where `rowid` or our key columns are names of the table's own.
    Whole,
}

/// A table starting a chain is cut into about this many ranges, so that rewriting one costs little.
const RANGES_PER_TABLE: u64 = 64;

/// Ranges hold at least this many rows: fewer would make many small Parquet files (a row group is
/// 122,880 rows) and a manifest entry each.
const MIN_RANGE_ROWS: u64 = 1 << 17;

/// A table with fewer rows than one range starts as one partition: cut by month, a small table of
/// two years of data was 24 files of a few hundred rows, each hashed, uploaded and listed (a first
/// incremental backup of 300k hits in HitKeep 2.8's layout took 6.3 s against 0.9 s for a full one).
/// This crate's unit tests cut demo data of a few thousand rows, so for them the limit is lower.
#[cfg(not(test))]
const WHOLE_BELOW: u64 = MIN_RANGE_ROWS;
#[cfg(test)]
const WHOLE_BELOW: u64 = 64;

/// A one-partition table that grows past this many rows starts a new chain, cut as its size asks
/// (once: the margin above [`WHOLE_BELOW`] keeps a table near the limit from switching back and forth).
const WHOLE_OUTGROWN: u64 = 4 * WHOLE_BELOW;

/// A range's rows are counted in buckets of this fraction of its rowids: coarse enough that the
/// counts are a few thousand groups, fine enough that ranges hold about their rows.
const BUCKET_OF_RANGE: u64 = 16;

/// The key's columns in the rows [`PartitionRule::keyed_rows`] selects: the month (`yyyymm`, -1
/// without a time, 0 for a rule without months) and the range in it.
pub(crate) const MONTH: &str = "__hitkeep_month";
pub(crate) const RANGE: &str = "__hitkeep_range";

/// A table, by schema and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableName<'a> {
    pub(crate) schema: &'a str,
    pub(crate) name: &'a str,
}

impl std::fmt::Display for TableName<'_> {
    /// The quoted, qualified name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", quote_ident(self.schema), quote_ident(self.name))
    }
}

impl PartitionRule {
    /// The rule for `table` (of `rows` rows and these `columns`) when its chain starts: by month where
    /// HitKeep's table has its time column, with ranges of a power of two near 1/64 of its rows.
    pub(crate) fn starting(table: TableName<'_>, rows: u64, columns: &[String]) -> PartitionRule {
        if rows < WHOLE_BELOW {
            return PartitionRule::Whole;
        }
        let rows = (rows / RANGES_PER_TABLE)
            .next_power_of_two()
            .max(MIN_RANGE_ROWS);
        let timed = timed_table(table.name).filter(|_| table.schema == "main");
        let rule = match timed {
            Some(timed) => PartitionRule::MonthRows {
                column: timed.column.to_owned(),
                rows,
            },
            None => PartitionRule::Rows { rows },
        };
        if rule.applies_to(columns) {
            rule
        } else if (PartitionRule::Rows { rows }).applies_to(columns) {
            PartitionRule::Rows { rows }
        } else {
            PartitionRule::Whole
        }
    }

    /// Whether a chain of this rule goes on at `rows` rows: only a one-partition table that has
    /// grown large starts a new one.
    pub(crate) fn fits(&self, rows: u64) -> bool {
        !matches!(self, PartitionRule::Whole) || rows < WHOLE_OUTGROWN
    }

    /// Whether the rule can cut a table of these `columns`: its time column is there, and nothing
    /// hides `rowid` or the key's columns. A recorded rule that no longer applies (a schema change)
    /// starts a new chain.
    pub(crate) fn applies_to(&self, columns: &[String]) -> bool {
        let has = |name: &str| columns.iter().any(|c| c.eq_ignore_ascii_case(name));
        match self {
            PartitionRule::Whole => true,
            _ if ["rowid", MONTH, RANGE, ROW, HASH, BUCKET]
                .into_iter()
                .any(has) =>
            {
                false
            }
            // A recorded rule comes from the bucket: a range of no rows cannot cut anything.
            PartitionRule::Rows { rows: 0 } | PartitionRule::MonthRows { rows: 0, .. } => false,
            PartitionRule::Rows { .. } => true,
            PartitionRule::MonthRows { column, .. } => columns.iter().any(|c| c == column),
        }
    }

    /// `SELECT` of `table`'s `columns` with each row's key in two integer columns, [`MONTH`] and
    /// [`RANGE`], last: for the rules whose key is a row's own ([`PartitionRule::MonthRows`] needs
    /// the counts a [`Cutting`] holds: [`Cutting::keyed_rows`]).
    fn own_keyed_rows(&self, table: TableName<'_>, columns: &[String]) -> String {
        let range = match self {
            PartitionRule::Rows { rows } => format!("rowid // {rows}"),
            _ => "0".to_owned(),
        };
        format!(
            "SELECT {}, 0 AS {MONTH}, {range} AS {RANGE} FROM {table}",
            quoted(columns)
        )
    }
}

/// SQL of the month key (`yyyymm`, UTC) of `column` in rows `of` (a table alias and a dot, or
/// nothing). Years a key can write are 0 to 9999; any other time, like none, is -1.
fn month_of(of: &str, column: &str) -> String {
    let at = format!("CAST({of}{} AS TIMESTAMP)", quote_ident(column));
    format!(
        "coalesce(CASE WHEN year({at}) BETWEEN 0 AND 9999 THEN year({at}) * 100 + month({at}) END, -1)"
    )
}

/// Rowids per bucket for ranges of `rows` rows.
fn bucket_rowids(rows: u64) -> u64 {
    (rows / BUCKET_OF_RANGE).max(1)
}

/// A table cut under its rule, read in the export's transaction: every partition's rows and
/// fingerprint by key and, under [`PartitionRule::MonthRows`], which buckets of rowids make up each
/// range. The export selects rows by these buckets, so it must read in the same transaction.
#[derive(Debug, Default)]
pub(crate) struct Cutting {
    /// Every partition by key.
    pub(crate) prints: BTreeMap<String, PartitionPrint>,
    /// [`PartitionRule::MonthRows`] only: every bucket that holds rows, in month and bucket order.
    buckets: Vec<Bucket>,
}

/// A bucket of a month's rowids: rows whose rowid less the month's first lies in
/// `[bucket·b, (bucket+1)·b)` for `b` = [`bucket_rowids`], all of them in `range`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    month: i64,
    first_rowid: i64,
    bucket: i64,
    range: i64,
}

/// Names of the columns our queries add to a table's rows; a table with a column of one of these
/// names (or `rowid`) is cut whole.
const ROW: &str = "__hitkeep_row";
const HASH: &str = "__hitkeep_hash";
const BUCKET: &str = "__hitkeep_bucket";

impl Cutting {
    /// `table` (of these `columns`, all of its own) cut under `rule`.
    ///
    /// [`PartitionRule::MonthRows`]: a row's range is how many of its month's rows come before it,
    /// divided by `rows`, counted per bucket of [`BUCKET_OF_RANGE`]th of a range's rowids from the
    /// month's first rowid (a bucket's rows share its range). One aggregate over the time column
    /// and `rowid` finds the months' first rowids; one scan groups each row's hash by month and
    /// bucket (a few thousand groups), joined on an integer to the months (a list in the query);
    /// the running sums over the buckets are ours. No window and no join over every column.
    pub(crate) fn read(
        conn: &Connection,
        table: TableName<'_>,
        columns: &[String],
        rule: &PartitionRule,
    ) -> duckdb::Result<Cutting> {
        let fingerprint = rows_fingerprint(&quoted(columns));
        let (column, rows) = match rule {
            // A whole table is read as it is: its own columns may be named like our key's.
            PartitionRule::Whole => {
                let sql = format!(
                    "SELECT 0, 0, count(*), CAST({fingerprint} AS VARCHAR) FROM {table} HAVING count(*) > 0"
                );
                return Cutting::of_keys(conn, rule, &sql);
            }
            PartitionRule::Rows { .. } => {
                let sql = format!(
                    "SELECT {MONTH}, {RANGE}, count(*), CAST({fingerprint} AS VARCHAR) FROM ({}) GROUP BY ALL",
                    rule.own_keyed_rows(table, columns)
                );
                return Cutting::of_keys(conn, rule, &sql);
            }
            PartitionRule::MonthRows { column, rows } => (column, *rows),
        };
        let firsts = month_firsts(conn, table, column)?;
        let Some(months) = firsts_list(firsts.iter().copied()) else {
            return Ok(Cutting::default());
        };
        let sql = format!(
            "SELECT f.month, (x.{ROW} - f.first_rowid) // {}, count(*), CAST(sum(x.{HASH}::HUGEINT) AS VARCHAR) \
             FROM (SELECT rowid AS {ROW}, {} AS {MONTH}, {} AS {HASH} FROM {table}) x \
             JOIN ({months}) f(month, first_rowid) ON x.{MONTH} = f.month GROUP BY ALL ORDER BY 1, 2",
            bucket_rowids(rows),
            month_of("", column),
            row_hash(&quoted(columns)),
        );
        let mut stmt = conn.prepare(&sql)?;
        let counted = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut cutting = Cutting::default();
        let mut sums: BTreeMap<String, (u64, i128)> = BTreeMap::new();
        let (mut month, mut before) = (None, 0u64);
        for row in counted {
            let (m, bucket, n, hashes) = row?;
            if month != Some(m) {
                (month, before) = (Some(m), 0);
            }
            let range = i64::try_from(before / rows).unwrap_or(i64::MAX);
            let n = u64::try_from(n).unwrap_or_default();
            before += n;
            let sum = sums.entry(key_text(rule, m, range)).or_default();
            sum.0 += n;
            sum.1 += hashes.parse::<i128>().map_err(|e| {
                duckdb::Error::FromSqlConversionFailure(3, duckdb::types::Type::Text, Box::new(e))
            })?;
            let first_rowid = firsts.iter().find(|f| f.0 == m).map_or(0, |f| f.1);
            cutting.buckets.push(Bucket {
                month: m,
                first_rowid,
                bucket,
                range,
            });
        }
        cutting.prints = sums
            .into_iter()
            .map(|(key, (rows, sum))| {
                (
                    key,
                    PartitionPrint {
                        rows,
                        fingerprint: sum.to_string(),
                    },
                )
            })
            .collect();
        Ok(cutting)
    }

    /// The partitions of a query that returns month, range, rows and fingerprint per partition.
    fn of_keys(conn: &Connection, rule: &PartitionRule, sql: &str) -> duckdb::Result<Cutting> {
        let mut stmt = conn.prepare(sql)?;
        let prints = stmt.query_map([], |r| {
            Ok((
                key_text(rule, r.get(0)?, r.get(1)?),
                PartitionPrint {
                    rows: u64::try_from(r.get::<_, i64>(2)?).unwrap_or_default(),
                    fingerprint: r.get(3)?,
                },
            ))
        })?;
        Ok(Cutting {
            prints: prints.collect::<duckdb::Result<_>>()?,
            buckets: Vec::new(),
        })
    }

    /// `SELECT` of `table`'s `columns` in the buckets `wanted` (of this cutting, rule
    /// [`PartitionRule::MonthRows`] of `column` and `rows`), each with its key in [`MONTH`] and
    /// [`RANGE`] last. Two joins on integers to lists in the query: the months (their first rowid
    /// gives a row's bucket), then the buckets wanted (which give its range).
    fn keyed_rows(
        table: TableName<'_>,
        columns: &[String],
        (column, rows): (&str, u64),
        wanted: &[Bucket],
    ) -> Option<String> {
        let months = firsts_list(wanted.iter().map(|b| (b.month, b.first_rowid)))?;
        let buckets = wanted
            .iter()
            .map(|b| {
                format!(
                    "({}::BIGINT, {}::BIGINT, {}::BIGINT)",
                    b.month, b.bucket, b.range
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let listed = |of: &str| {
            columns
                .iter()
                .map(|c| format!("{of}{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(format!(
            "SELECT {}, w.month AS {MONTH}, w.range AS {RANGE} FROM \
             (SELECT {}, f.month AS {MONTH}, (t.rowid - f.first_rowid) // {} AS {BUCKET} FROM {table} t \
             JOIN ({months}) f(month, first_rowid) ON {} = f.month) x \
             JOIN (VALUES {buckets}) w(month, bucket, range) ON x.{MONTH} = w.month AND x.{BUCKET} = w.bucket",
            listed("x."),
            listed("t."),
            bucket_rowids(rows),
            month_of("t.", column),
        ))
    }
}

/// Each month of `column` in `table` with its first rowid.
fn month_firsts(
    conn: &Connection,
    table: TableName<'_>,
    column: &str,
) -> duckdb::Result<Vec<(i64, i64)>> {
    let sql = format!(
        "SELECT {} AS month, min(rowid) FROM {table} GROUP BY 1 ORDER BY 1",
        month_of("", column)
    );
    let mut stmt = conn.prepare(&sql)?;
    let firsts = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    firsts.collect()
}

/// `VALUES` of months and their first rowids, each once; `None` for none.
fn firsts_list(firsts: impl Iterator<Item = (i64, i64)>) -> Option<String> {
    let distinct: BTreeMap<i64, i64> = firsts.collect();
    (!distinct.is_empty()).then(|| {
        let rows: Vec<String> = distinct
            .iter()
            .map(|(m, r)| format!("({m}::BIGINT, {r}::BIGINT)"))
            .collect();
        format!("VALUES {}", rows.join(", "))
    })
}

/// A partition's key as text, from its month (`yyyymm`, -1, or 0) and range.
pub(crate) fn key_text(rule: &PartitionRule, month: i64, range: i64) -> String {
    match rule {
        PartitionRule::Whole => "all".to_owned(),
        PartitionRule::Rows { .. } => format!("rows.{range}"),
        PartitionRule::MonthRows { .. } if month < 0 => format!("none.{range}"),
        PartitionRule::MonthRows { .. } => {
            format!("{:04}-{:02}.{range}", month / 100, month % 100)
        }
    }
}

/// The month and range of a key [`key_text`] wrote under `rule`; `None` for any other text.
pub(crate) fn key_parts(rule: &PartitionRule, key: &str) -> Option<(i64, i64)> {
    let number = |s: &str| s.parse::<i64>().ok().filter(|n| *n >= 0);
    match rule {
        PartitionRule::Whole => (key == "all").then_some((0, 0)),
        PartitionRule::Rows { .. } => Some((0, number(key.strip_prefix("rows.")?)?)),
        PartitionRule::MonthRows { .. } => {
            let (month, range) = key.split_once('.')?;
            let month = match month {
                "none" => -1,
                _ => {
                    let (year, m) = month.split_once('-')?;
                    let (year, m) = (number(year)?, number(m)?);
                    ((1..=12).contains(&m) && year <= 9999).then_some(year * 100 + m)?
                }
            };
            Some((month, number(range)?))
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

/// The columns of `table`, in order.
#[cfg(test)]
pub(crate) fn table_columns(
    conn: &Connection,
    table: TableName<'_>,
) -> duckdb::Result<Vec<String>> {
    let mut tables = hitkeep_data::table_columns(conn, table.schema, Some(table.name))?;
    let columns = tables.remove(table.name).unwrap_or_default();
    Ok(columns.into_iter().map(|(name, _)| name).collect())
}

/// [`Cutting::read`] of every column `table` has.
#[cfg(test)]
pub(crate) fn cut(
    conn: &Connection,
    table: TableName<'_>,
    rule: &PartitionRule,
) -> duckdb::Result<Cutting> {
    Cutting::read(conn, table, &table_columns(conn, table)?, rule)
}

/// The partitions of [`cut`].
#[cfg(test)]
pub(crate) fn partition_prints(
    conn: &Connection,
    table: TableName<'_>,
    rule: &PartitionRule,
) -> duckdb::Result<BTreeMap<String, PartitionPrint>> {
    Ok(cut(conn, table, rule)?.prints)
}

impl Cutting {
    /// `SELECT` of the rows of `table` in the partitions `keys` (keys of `rule`, the rule this
    /// cutting was read under, in the same transaction), without their key columns unless
    /// `with_key` (what `PARTITION_BY` needs); `None` when `keys` is empty or names a key `rule`
    /// never writes.
    pub(crate) fn rows_in(
        &self,
        table: TableName<'_>,
        columns: &[String],
        rule: &PartitionRule,
        keys: &[&str],
        with_key: bool,
    ) -> Option<String> {
        let mut months: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for key in keys {
            let (month, range) = key_parts(rule, key)?;
            months.entry(month).or_default().push(range);
        }
        if months.is_empty() {
            return None;
        }
        let selected = if with_key {
            format!("{}, {MONTH}, {RANGE}", quoted(columns))
        } else {
            quoted(columns)
        };
        if let PartitionRule::MonthRows { column, rows } = rule {
            let wanted: Vec<Bucket> = (self.buckets.iter())
                .filter(|b| months.get(&b.month).is_some_and(|r| r.contains(&b.range)))
                .copied()
                .collect();
            let keyed = Cutting::keyed_rows(table, columns, (column, *rows), &wanted)?;
            return Some(format!("SELECT {selected} FROM ({keyed})"));
        }
        let wanted = months
            .iter()
            .map(|(month, ranges)| {
                let ranges = ranges.iter().map(i64::to_string).collect::<Vec<_>>();
                format!("({MONTH} = {month} AND {RANGE} IN ({}))", ranges.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        Some(format!(
            "SELECT {selected} FROM ({}) WHERE {wanted}",
            rule.own_keyed_rows(table, columns)
        ))
    }
}

/// The quoted names, comma-separated.
pub(crate) fn quoted(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HITS: TableName<'static> = TableName {
        schema: "main",
        name: "hits",
    };

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
            rows: 1024, // buckets of 64 rowids: ranges of rows written in order are exact
        }
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM ({sql})"), [], |r| r.get(0))
            .unwrap()
    }

    fn in_main(name: &str) -> TableName<'_> {
        TableName {
            schema: "main",
            name,
        }
    }

    #[test]
    fn rules_cut_timed_tables_by_month_and_others_by_rows() {
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            PartitionRule::starting(HITS, 16_000_000, &cols(&["id", "timestamp"])),
            PartitionRule::MonthRows {
                column: "timestamp".into(),
                rows: 1 << 18
            }
        );
        assert_eq!(
            PartitionRule::starting(in_main("hit_rollups_daily"), 100, &cols(&["bucket"])),
            PartitionRule::MonthRows {
                column: "bucket".into(),
                rows: MIN_RANGE_ROWS
            }
        );
        // Small tables are one file, until they outgrow it.
        let small = PartitionRule::starting(in_main("hit_rollups_daily"), 10, &cols(&["bucket"]));
        assert_eq!(small, PartitionRule::Whole);
        assert!(small.fits(WHOLE_OUTGROWN - 1) && !small.fits(WHOLE_OUTGROWN));
        assert!(PartitionRule::Rows { rows: 1 }.fits(u64::MAX));
        let by_rows = PartitionRule::Rows {
            rows: MIN_RANGE_ROWS,
        };
        assert_eq!(
            PartitionRule::starting(in_main("sites"), 100, &cols(&["id"])),
            by_rows
        );
        // A timed table without its column (another schema): by rows, never a failing query.
        assert_eq!(PartitionRule::starting(HITS, 100, &cols(&["id"])), by_rows);
        let elsewhere = TableName {
            schema: "other",
            name: "hits",
        };
        assert_eq!(
            PartitionRule::starting(elsewhere, 100, &cols(&["timestamp"])),
            by_rows
        );
        // A column that hides rowid or our key: the table is one partition.
        assert_eq!(
            PartitionRule::starting(in_main("odd"), 100, &cols(&["RowId"])),
            PartitionRule::Whole
        );
        assert!(!small_ranges().applies_to(&cols(&["id", "__hitkeep_range", "timestamp"])));
        // A rule read from a damaged manifest: a new chain starts, nothing divides by zero.
        let empty = PartitionRule::MonthRows {
            column: "timestamp".into(),
            rows: 0,
        };
        assert!(!empty.applies_to(&cols(&["timestamp"])));
        let recorded = serde_json::to_string(&small_ranges()).unwrap();
        assert_eq!(
            recorded,
            r#"{"kind":"month-rows","column":"timestamp","rows":1024}"#
        );
    }

    #[test]
    fn keys_read_back_as_written_and_nothing_else() {
        let rule = small_ranges();
        for (month, range) in [(202611, 3), (-1, 0), (99912, 7)] {
            let key = key_text(&rule, month, range);
            assert_eq!(key_parts(&rule, &key), Some((month, range)), "{key}");
        }
        assert_eq!(key_text(&rule, 202611, 3), "2026-11.3");
        for bad in [
            "2026-13.0",
            "2026-11",
            "2026-11.-1",
            "rows.1",
            "all",
            "2026-11.1; DROP",
        ] {
            assert_eq!(key_parts(&rule, bad), None, "{bad}");
        }
        let rows = PartitionRule::Rows { rows: 8 };
        assert_eq!(key_parts(&rows, "rows.12"), Some((0, 12)));
        assert_eq!(key_parts(&rows, "2026-11.3"), None);
        assert_eq!(key_parts(&PartitionRule::Whole, "all"), Some((0, 0)));
        let none = Cutting::default();
        assert_eq!(none.rows_in(HITS, &[], &rule, &[], false), None);
        assert_eq!(none.rows_in(HITS, &[], &rule, &["rows.1"], false), None);
    }

    /// Times a key cannot write (before year 0, after 9999, infinite) go with the rows without one:
    /// a key per partition, and every row read back by its key.
    #[test]
    fn times_a_key_cannot_write_go_with_the_rows_without_one() {
        let conn = Connection::open_in_memory().unwrap();
        hits(&conn, 1, 10);
        conn.execute_batch(
            "INSERT INTO hits (id, \"timestamp\", path) SELECT gen_random_uuid(), CAST(t AS TIMESTAMPTZ), '/odd' \
             FROM (VALUES (TIMESTAMP '0044-03-15 (BC)'), (TIMESTAMP '12000-01-01'), ('infinity'::TIMESTAMP), (NULL)) v(t)",
        )
        .unwrap();
        let rule = small_ranges();
        let cutting = cut(&conn, HITS, &rule).unwrap();
        let prints = &cutting.prints;
        let keys: Vec<&str> = prints.keys().map(String::as_str).collect();
        assert_eq!(keys, ["2026-01.0", "none.0"]);
        assert_eq!(prints["none.0"].rows, 4);
        let columns = table_columns(&conn, HITS).unwrap();
        for (key, print) in prints {
            let sql = cutting
                .rows_in(HITS, &columns, &rule, &[key], false)
                .unwrap();
            assert_eq!(count(&conn, &sql), print.rows as i64, "{key}");
        }
    }

    #[test]
    fn partitions_hold_every_row_once_by_month_then_write_order() {
        let conn = Connection::open_in_memory().unwrap();
        hits(&conn, 3, 2500);
        // Rows without a time have a partition of their own.
        conn.execute_batch("INSERT INTO hits (id, path) VALUES (gen_random_uuid(), '/untimed')")
            .unwrap();
        let cutting = cut(&conn, HITS, &small_ranges()).unwrap();
        let prints = &cutting.prints;
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
                "2026-03.2",
                "none.0"
            ]
        );
        let rows: Vec<u64> = prints.values().map(|p| p.rows).collect();
        assert_eq!(rows, [1024, 1024, 452, 1024, 1024, 452, 1024, 1024, 452, 1]);
        // Read back by key, every partition holds exactly its rows, and all of them the table.
        let columns = table_columns(&conn, HITS).unwrap();
        let rule = small_ranges();
        for (key, print) in prints {
            let sql = cutting
                .rows_in(HITS, &columns, &rule, &[key], false)
                .unwrap();
            let fingerprint: String = conn
                .query_row(
                    &format!(
                        "SELECT CAST({} AS VARCHAR) FROM ({sql})",
                        rows_fingerprint(&quoted(&columns))
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(
                (count(&conn, &sql) as u64, &fingerprint),
                (print.rows, &print.fingerprint),
                "{key}"
            );
        }
        let all: Vec<&str> = prints.keys().map(String::as_str).collect();
        let every = cutting.rows_in(HITS, &columns, &rule, &all, false).unwrap();
        for sql in [
            format!("SELECT * FROM hits EXCEPT ALL {every}"),
            format!("{every} EXCEPT ALL SELECT * FROM hits"),
        ] {
            assert_eq!(count(&conn, &sql), 0, "{sql}");
        }
        // With the key, for PARTITION_BY: the two key columns come last.
        let keyed = (cutting.rows_in(HITS, &columns, &rule, &["2026-02.2"], true)).unwrap();
        let (month, range): (i64, i64) = conn
            .query_row(
                &format!("SELECT DISTINCT __hitkeep_month, __hitkeep_range FROM ({keyed})"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((month, range), (202602, 2));
    }

    #[test]
    fn a_delete_in_one_month_leaves_the_other_months_partitions_as_they_were() {
        // After a delete, DuckDB may renumber the rows at a checkpoint (1.5 did, in a table without
        // an index, measured) or keep their rowids (with an index, or as this build did in a test of
        // this shape). Both are tested, the renumbering made certain by rewriting the table in rowid
        // order, as a vacuum does.
        for renumbered in [false, true] {
            let conn = Connection::open_in_memory().unwrap();
            hits(&conn, 4, 150_000);
            let rule = PartitionRule::MonthRows {
                column: "timestamp".into(),
                rows: 1 << 15,
            };
            let before = partition_prints(&conn, HITS, &rule).unwrap();
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
            let after = partition_prints(&conn, HITS, &rule).unwrap();
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
        let before = partition_prints(&conn, HITS, &small_ranges()).unwrap();
        // Late rows for early in February, and one change in January.
        conn.execute_batch(
            "INSERT INTO hits SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
             to_timestamp(epoch(DATE '2026-02-01')), '/late', NULL FROM range(700);
             UPDATE hits SET path = '/changed' WHERE rowid = 10",
        )
        .unwrap();
        let after = partition_prints(&conn, HITS, &small_ranges()).unwrap();
        let changed: Vec<&str> = after
            .iter()
            .filter(|(k, p)| before.get(*k) != Some(p))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(changed, ["2026-01.0", "2026-02.2", "2026-02.3"]);
    }

    #[test]
    fn months_written_out_of_time_order_are_cut_as_coarsely_as_in_order() {
        let in_order = Connection::open_in_memory().unwrap();
        hits(&in_order, 2, 4000);
        let shuffled = Connection::open_in_memory().unwrap();
        shuffled
            .execute_batch(
                "CREATE TABLE hits (id UUID, site_id UUID, \"timestamp\" TIMESTAMPTZ, path VARCHAR, referrer VARCHAR);
                 INSERT INTO hits SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
                 to_timestamp(epoch(DATE '2026-01-01') + (i % 2) * 31 * 86400 + i), '/p', NULL FROM range(8000) t(i)",
            )
            .unwrap();
        let rule = small_ranges();
        let keys = |conn: &Connection| -> Vec<String> {
            partition_prints(conn, HITS, &rule)
                .unwrap()
                .into_keys()
                .collect()
        };
        assert_eq!(
            keys(&shuffled),
            keys(&in_order),
            "the same ranges per month"
        );
        assert_eq!(
            keys(&in_order).len(),
            8,
            "4 ranges of up to 1,024 rows a month"
        );

        // Appending to one month keeps the step: earlier ranges stay as they were.
        let before = partition_prints(&shuffled, HITS, &rule).unwrap();
        shuffled
            .execute_batch(
                "INSERT INTO hits SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
                 to_timestamp(epoch(DATE '2026-02-20') + i), '/new', NULL FROM range(900) t(i)",
            )
            .unwrap();
        let after = partition_prints(&shuffled, HITS, &rule).unwrap();
        let changed: Vec<&str> = after
            .iter()
            .filter(|(k, p)| before.get(*k) != Some(p))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(changed, ["2026-02.3", "2026-02.4"], "{after:?}");
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
                for (schema, name) in hitkeep_data::user_tables(&conn).unwrap() {
                    let table = TableName {
                        schema: &schema,
                        name: &name,
                    };
                    let columns = table_columns(&conn, table).unwrap();
                    let rows = count(&conn, &format!("SELECT * FROM {table}"));
                    let rule = PartitionRule::starting(table, rows as u64, &columns);
                    if matches!(rule, PartitionRule::MonthRows { .. }) {
                        timed += 1;
                    }
                    let prints = partition_prints(&conn, table, &rule).unwrap();
                    let whole: i128 = conn
                        .query_row(
                            &format!(
                                "SELECT coalesce({}, 0)::VARCHAR FROM {table}",
                                rows_fingerprint(&quoted(&columns))
                            ),
                            [],
                            |r| r.get::<_, String>(0),
                        )
                        .unwrap()
                        .parse()
                        .unwrap();
                    let parts: u64 = prints.values().map(|p| p.rows).sum();
                    let sum: i128 = prints
                        .values()
                        .map(|p| p.fingerprint.parse::<i128>().unwrap())
                        .sum();
                    assert_eq!(parts, rows as u64, "{release:?} {table}: rows");
                    assert_eq!(sum, whole, "{release:?} {table}: fingerprints");
                }
            }
            assert!(timed >= 10, "{release:?}: only {timed} tables cut by month");
        }
    }
}
