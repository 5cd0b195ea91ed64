//! The proof a delete rests on: per table, the live rows before a cutoff against the rows of the
//! archive's copies as read back, by content. It reads and compares; it never deletes and never
//! talks to storage.
//!
//! A read-back takes each copy's print ([`CopyPrint`]: its rows and their fingerprint), so that the
//! comparison inside the delete's transaction scans only the live rows, in one query. A table whose
//! columns changed since, or a copy without a print (a recovery's download), is compared the long
//! way, which every print only ever shortens: the answers are the same.

use std::collections::BTreeMap;

use duckdb::Connection;
use hitkeep_data::{quote_ident, rows_fingerprint};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::run::{Copies, named_values, per_table_query, predicate, present_tables};
use crate::tables::{ArchiveTable, Cutoff};

/// How one table's live rows before a cutoff compare with an archive file's rows of that table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Comparison {
    /// Live rows before the cutoff.
    pub(crate) live: u64,
    /// The file's rows of the table.
    pub(crate) archived: u64,
    /// Live rows the file does not hold (by content, duplicates counted).
    pub(crate) not_archived: u64,
}

impl Comparison {
    /// Rows of the file the database no longer holds.
    pub(crate) fn gone(&self) -> u64 {
        (self.archived + self.not_archived).saturating_sub(self.live)
    }
}

/// What the read-back of one table's copy learned: the select list both sides are hashed over, the
/// live columns it was made for, and the copy's rows and fingerprint under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CopyPrint {
    live_columns: Vec<(String, String)>,
    exprs: String,
    rows: u64,
    fingerprint: Option<i128>,
}

/// Reads a table's copy back (`from`, a `read_parquet(…)`): its rows per `_source`, and, when the
/// table's live columns are given and the file holds each of them, the print of its `table` rows.
/// One scan of the copy serves both.
pub(crate) fn read_copy(
    conn: &Connection,
    table: &str,
    live_columns: Option<&[(String, String)]>,
    from: &str,
) -> Result<(BTreeMap<String, u64>, Option<CopyPrint>)> {
    let printable = match live_columns {
        Some(live) if !live.is_empty() => {
            let in_file = file_columns(conn, from)?;
            live.iter()
                .all(|(c, _)| in_file.contains_key(c))
                .then(|| (live, select_list(live, &in_file)))
        }
        _ => None,
    };
    let fingerprint = printable
        .as_ref()
        .map_or_else(|| "NULL::HUGEINT".to_owned(), |(_, e)| rows_fingerprint(e));
    let sql = format!("SELECT _source, count(*), {fingerprint} FROM {from} GROUP BY 1");
    let failed = |e| Error::duckdb("reading the archive back", e);
    let mut stmt = conn.prepare(&sql).map_err(failed)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i128>>(2)?,
            ))
        })
        .map_err(failed)?;
    let (mut found, mut print) = (BTreeMap::new(), None);
    for row in rows {
        let (source, n, fingerprint) = row.map_err(failed)?;
        let n = u64::try_from(n).unwrap_or_default();
        if source == table {
            print = printable.as_ref().map(|(live, exprs)| CopyPrint {
                live_columns: live.to_vec(),
                exprs: exprs.clone(),
                rows: n,
                fingerprint,
            });
        }
        found.insert(source, n);
    }
    Ok((found, print))
}

/// Per table, the live rows before `cutoff` against the rows of the archive's copies, by content.
/// Tables with a print that still holds are settled by one query over the live rows (counts and
/// fingerprints); the others go through [`compare_by_content`]. Any difference is compared row by
/// row ([`rows_missing`]), so a print only ever takes the fast way to the same answer.
pub(crate) fn rows_not_in(
    conn: &Connection,
    site: Uuid,
    cutoff: Cutoff,
    copies: &Copies,
    prints: &BTreeMap<String, CopyPrint>,
) -> Result<BTreeMap<String, Comparison>> {
    let tables = present_tables(conn)?;
    let printed = holding_prints(conn, prints)?;
    let live = live_rows(conn, site, cutoff, &tables, &printed)?;
    // Every copy printed: the read-backs counted them already.
    let archived = match copies {
        Copies::PerTable(parts) if parts.keys().all(|t| printed.contains_key(t.as_str())) => {
            printed
                .iter()
                .map(|(t, p)| ((*t).to_owned(), p.rows))
                .collect()
        }
        _ => copies.counts(conn)?,
    };
    let mut out = BTreeMap::new();
    let mut unprinted = Vec::new();
    for table in tables {
        let (live, live_print) = live.get(table.name).copied().unwrap_or_default();
        let in_file = archived.get(table.name).copied().unwrap_or(0);
        let mut c = Comparison {
            live,
            archived: in_file,
            not_archived: live,
        };
        // The file is not asked about a table it holds no rows of: that table's columns may not be
        // in it at all, and every live row is "not archived" anyway.
        if let Some(source) = copies
            .rows_of(table.name)
            .filter(|_| live > 0 && in_file > 0)
        {
            let live_rows = format!(
                "{} WHERE {}",
                quote_ident(table.name),
                predicate(site, table, cutoff)
            );
            match printed.get(table.name) {
                Some(p) if p.rows == live && p.fingerprint == live_print => c.not_archived = 0,
                Some(p) => c.not_archived = rows_missing(conn, &p.exprs, &live_rows, &source)?,
                None => unprinted.push((table.name, live_rows, source)),
            }
        }
        out.insert(table.name.to_owned(), c);
    }
    // A table compared the long way although this run printed its copy is a slow path to notice.
    tracing::debug!(
        printed = printed.len(),
        long_way = unprinted.len(),
        "compared the live rows with the archive's copies"
    );
    compare_by_content(conn, &unprinted, &mut out)?;
    Ok(out)
}

/// The prints whose table still has the columns they were made for: a changed table is compared
/// the long way.
fn holding_prints<'a>(
    conn: &Connection,
    prints: &'a BTreeMap<String, CopyPrint>,
) -> Result<BTreeMap<&'a str, &'a CopyPrint>> {
    if prints.is_empty() {
        return Ok(BTreeMap::new());
    }
    let columns = crate::browse::tables_columns(conn)?;
    Ok(prints
        .iter()
        .filter(|(t, p)| columns.get(t.as_str()) == Some(&p.live_columns))
        .map(|(t, p)| (t.as_str(), p))
        .collect())
}

/// Per present table, its live rows before `cutoff` and, for the printed ones, their fingerprint
/// under the print's select list: one query over every table.
fn live_rows(
    conn: &Connection,
    site: Uuid,
    cutoff: Cutoff,
    tables: &[&ArchiveTable],
    printed: &BTreeMap<&str, &CopyPrint>,
) -> Result<BTreeMap<String, (u64, Option<i128>)>> {
    if tables.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql = per_table_query(tables, site, cutoff, |table| {
        printed.get(table.name).map_or_else(
            || "NULL::HUGEINT".to_owned(),
            |p| rows_fingerprint(&p.exprs),
        )
    });
    let failed = |e| Error::duckdb("comparing with the archive", e);
    let mut stmt = conn.prepare(&sql).map_err(failed)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or_default(),
                    r.get::<_, Option<i128>>(2)?,
                ),
            ))
        })
        .map_err(failed)?;
    rows.collect::<std::result::Result<_, _>>().map_err(failed)
}

/// The tables without a print (`table`, its live rows, its rows in the copies), compared by
/// content into `out`: the fingerprints clear those they can in one query, and every other table
/// is compared row by row.
fn compare_by_content(
    conn: &Connection,
    tables: &[(&str, String, String)],
    out: &mut BTreeMap<String, Comparison>,
) -> Result<()> {
    let exprs = comparable(conn, tables)?;
    // Only equal counts can be the same rows.
    let equal_counts: Vec<usize> = (0..tables.len())
        .filter(|&i| {
            let c = &out[tables[i].0];
            c.live == c.archived
        })
        .collect();
    let fingerprinted: Vec<_> = equal_counts
        .iter()
        .map(|&i| (exprs[i].as_str(), &tables[i]))
        .collect();
    let same = same_fingerprints(conn, &fingerprinted)?;
    let cleared: Vec<usize> = equal_counts
        .into_iter()
        .zip(same)
        .filter_map(|(i, same)| same.then_some(i))
        .collect();
    for (i, ((table, live_rows, source), exprs)) in tables.iter().zip(&exprs).enumerate() {
        out.get_mut(*table)
            .expect("inserted by the caller")
            .not_archived = if cleared.contains(&i) {
            0
        } else {
            rows_missing(conn, exprs, live_rows, source)?
        };
    }
    Ok(())
}

/// Whether the rows each table's `exprs` select from its live rows and from its archived rows have
/// the same order-independent fingerprint: the sum of a 64-bit hash per row. Equal counts and
/// fingerprints mean the same rows, duplicates included, but for a chance of about 2^-64; a scan of
/// each side where [`rows_missing`] builds a hash table of every row (measured at 4M hits: 0.08 s
/// against 1.07 s for the `hits` rows). Any difference, even one the content comparison would accept,
/// goes to [`rows_missing`]: the fingerprint only ever takes the fast way to the answer the comparison
/// would give. Every table in one query: a query apiece cost more than the scans at 1M hits. The
/// fingerprint and why it hashes twice: [`hitkeep_data::rows_fingerprint`].
fn same_fingerprints(
    conn: &Connection,
    tables: &[(&str, &(&str, String, String))],
) -> Result<Vec<bool>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let fingerprint = |exprs: &str, from: &str| {
        format!(
            "(SELECT {} FROM {from})",
            hitkeep_data::rows_fingerprint(exprs)
        )
    };
    let checks = tables
        .iter()
        .map(|(exprs, (_, live, archived))| {
            format!(
                "{} IS NOT DISTINCT FROM {}",
                fingerprint(exprs, live),
                fingerprint(exprs, archived)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    conn.query_row(&format!("SELECT {checks}"), [], |r| {
        (0..tables.len()).map(|i| r.get::<_, bool>(i)).collect()
    })
    .map_err(|e| Error::duckdb("fingerprinting the archive's rows", e))
}

/// Live rows (`exprs` of `live`) that `archived` does not hold, by content, duplicates counted.
fn rows_missing(conn: &Connection, exprs: &str, live: &str, archived: &str) -> Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT {exprs} FROM {live} EXCEPT ALL SELECT {exprs} FROM {archived})"
    );
    let n: i64 = conn
        .query_row(&sql, [], |r| r.get(0))
        .map_err(|e| Error::duckdb("comparing with the archive", e))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Per table, the select list that compares its live rows with its rows in `source` ([`select_list`]).
fn comparable(conn: &Connection, tables: &[(&str, String, String)]) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let mut columns = crate::browse::tables_columns(conn)?;
    tables
        .iter()
        .map(|(table, _, source)| {
            let live = columns.remove(*table).unwrap_or_default();
            Ok(select_list(&live, &file_columns(conn, source)?))
        })
        .collect()
}

/// The select list that compares a table's live rows (`live`, its columns and types) with its rows
/// in a file (`in_file`): each column as itself where the file holds it in the table's own type
/// (what a file per table holds, and cheap to hash), else both sides as text. A one-file archive
/// widened DATE columns to TIMESTAMPTZ (midnight UTC), which has no way back without ICU: those
/// compare as the date's text.
fn select_list(live: &[(String, String)], in_file: &BTreeMap<String, String>) -> String {
    live.iter()
        .map(|(c, t)| match in_file.get(c) {
            Some(file_type) if file_type == t => quote_ident(c),
            _ if t == "DATE" => format!("left(CAST({} AS VARCHAR), 10)", quote_ident(c)),
            _ => format!("CAST({} AS VARCHAR)", quote_ident(c)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns `source` reads from an archive file, and their types.
fn file_columns(conn: &Connection, source: &str) -> Result<BTreeMap<String, String>> {
    let sql = format!("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})");
    named_values(conn, &sql, "reading the archive's columns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hitkeep_data::quote_literal;

    /// Two tables `a` and `b` of `columns`, holding `a` and `b` (VALUES lists), compared whole.
    fn same_rows(columns: &str, a: &str, b: &str) -> bool {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE a ({columns}); INSERT INTO a VALUES {a};
             CREATE TABLE b ({columns}); INSERT INTO b VALUES {b};"
        ))
        .unwrap();
        let names: Vec<&str> = columns
            .split(',')
            .filter_map(|c| c.split_whitespace().next())
            .collect();
        let exprs = names.join(", ");
        let (fast, exact) = (
            same_fingerprints(&conn, &[(exprs.as_str(), &("a", "a".into(), "b".into()))]).unwrap()
                == [true],
            rows_missing(&conn, &exprs, "a", "b").unwrap() == 0
                && rows_missing(&conn, &exprs, "b", "a").unwrap() == 0,
        );
        assert!(
            !fast || exact,
            "the fingerprint took rows for equal that are not"
        );
        fast
    }

    fn fingerprints_match(a: &str, b: &str) -> bool {
        same_rows("x INTEGER, y VARCHAR", a, b)
    }

    #[test]
    fn fingerprints_tell_the_same_rows_from_changed_ones() {
        // The same rows in another order, NULLs included: equal.
        assert!(fingerprints_match(
            "(1, 'p'), (2, NULL), (2, NULL)",
            "(2, NULL), (1, 'p'), (2, NULL)"
        ));
        // One value changed.
        assert!(!fingerprints_match(
            "(1, 'p'), (2, 'q')",
            "(1, 'p'), (2, 'r')"
        ));
        // Same count, but a duplicate moved to another row.
        assert!(!fingerprints_match(
            "(1, 'p'), (1, 'p'), (2, 'q')",
            "(1, 'p'), (2, 'q'), (2, 'q')"
        ));
        // Values swapped between rows: each column's multiset is the same, the rows are not.
        assert!(!fingerprints_match(
            "(1, 'p'), (2, 'q')",
            "(1, 'q'), (2, 'p')"
        ));
        // A NULL where a value was.
        assert!(!fingerprints_match("(1, 'p')", "(1, NULL)"));
        // Other types HitKeep's tables hold, as a file per table keeps them.
        let typed = "t TIMESTAMPTZ, d DATE, v DOUBLE, u UUID";
        let uuid = "'0190a1b2-0000-7000-8000-000000000001'";
        let row =
            |t: &str, v: &str| format!("('2026-01-02 03:04:{t}+00', '2026-01-02', {v}, {uuid})");
        let first = row("05.123456", "0.1");
        assert!(same_rows(typed, &first, &first));
        assert!(!same_rows(typed, &first, &row("05.123457", "0.1")));
        assert!(!same_rows(
            typed,
            &first,
            &row("05.123456", "0.10000000000000002")
        ));
    }

    /// One site's `hits`: three rows before the cutoff (one of another site) and one after.
    fn hits(conn: &Connection, site: Uuid) {
        conn.execute_batch(&format!(
            "CREATE TABLE hits (id INTEGER, site_id UUID, timestamp TIMESTAMPTZ, path VARCHAR);
             INSERT INTO hits VALUES
               (1, '{site}', '2026-01-01 00:00:00+00', '/a'),
               (2, '{site}', '2026-02-01 00:00:00+00', NULL),
               (3, '{site}', '2026-03-01 00:00:00+00', '/a'),
               (4, '{site}', '2027-01-01 00:00:00+00', '/new'),
               (5, '{}', '2026-01-01 00:00:00+00', '/other');",
            Uuid::from_u128(7)
        ))
        .unwrap();
    }

    /// The comparison with the read-back's prints and without them: the prints only ever take the
    /// fast way to the same answer, whatever they hold.
    fn compared(
        conn: &Connection,
        (site, cutoff): (Uuid, Cutoff),
        copies: &Copies,
        prints: &BTreeMap<String, CopyPrint>,
    ) -> (String, String) {
        let with = rows_not_in(conn, site, cutoff, copies, prints).map(|c| c["hits"]);
        let without = rows_not_in(conn, site, cutoff, copies, &BTreeMap::new()).map(|c| c["hits"]);
        (format!("{with:?}"), format!("{without:?}"))
    }

    #[test]
    fn a_read_backs_print_settles_the_comparison_and_never_changes_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        let site = Uuid::from_u128(1);
        hits(&conn, site);
        let cutoff = Cutoff::at("2026-06-01T00:00:00Z".parse().unwrap());
        let table = crate::tables::TABLES
            .iter()
            .find(|t| t.name == "hits")
            .unwrap();
        let file = dir.path().join("hits.parquet");
        conn.execute_batch(&format!(
            "COPY (SELECT 'hits' AS _source, * FROM hits WHERE {}) TO {} (FORMAT PARQUET)",
            predicate(site, table, cutoff),
            quote_literal(&file.display().to_string())
        ))
        .unwrap();
        let live = crate::browse::tables_columns(&conn)
            .unwrap()
            .remove("hits")
            .unwrap();
        let reader = Connection::open_in_memory().unwrap();
        let from = format!(
            "read_parquet({})",
            quote_literal(&file.display().to_string())
        );
        let (found, print) = read_copy(&reader, "hits", Some(&live), &from).unwrap();
        assert_eq!(found, BTreeMap::from([("hits".to_owned(), 3)]));
        let print = print.expect("every live column is in the file");
        assert_eq!(
            (print.rows, print.exprs.as_str()),
            (3, r#""id", "site_id", "timestamp", "path""#)
        );
        assert_eq!(
            read_copy(&reader, "hits", None, &from).unwrap(),
            (found, None),
            "no live columns, no print"
        );
        let copies = Copies::PerTable(BTreeMap::from([("hits".to_owned(), file)]));
        let mut prints = BTreeMap::from([("hits".to_owned(), print.clone())]);
        let key = (site, cutoff);
        let same = format!(
            "{:?}",
            Ok::<_, ()>(Comparison {
                live: 3,
                archived: 3,
                not_archived: 0
            })
        );
        assert_eq!(
            compared(&conn, key, &copies, &prints),
            (same.clone(), same.clone())
        );

        // A print whose fingerprint is wrong sends the table to the row-by-row comparison, which
        // finds the same rows.
        prints.get_mut("hits").unwrap().fingerprint = Some(0);
        assert_eq!(compared(&conn, key, &copies, &prints), (same.clone(), same));
        prints.insert("hits".to_owned(), print);

        // A row rewritten after the read-back: one live row not archived, one archived row gone.
        conn.execute_batch("UPDATE hits SET path = '/b' WHERE id = 2")
            .unwrap();
        let changed = format!(
            "{:?}",
            Ok::<_, ()>(Comparison {
                live: 3,
                archived: 3,
                not_archived: 1
            })
        );
        assert_eq!(
            compared(&conn, key, &copies, &prints),
            (changed.clone(), changed)
        );

        // A column added since: the print no longer holds and the comparison is the long way's.
        conn.execute_batch("ALTER TABLE hits ADD COLUMN referrer VARCHAR")
            .unwrap();
        assert!(holding_prints(&conn, &prints).unwrap().is_empty());
        let (with, without) = compared(&conn, key, &copies, &prints);
        assert_eq!(with, without);
    }
}
