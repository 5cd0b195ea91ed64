//! Keys and indexes built over loaded tables, several at once.
//!
//! Two phases, each spread over the builder connections, largest table first so that the longest
//! build starts at once: every deferred primary key (`ALTER TABLE … ADD PRIMARY KEY`), then every
//! index. Not a chain per table: DuckDB refuses to alter a table that has an index, and refuses an
//! index on a table altered while any older transaction is still open ("cannot add an index to a
//! table that has been altered"), which a build running beside it is. Between the phases every
//! builder's transaction has ended. Indexes of one table may build side by side.
//!
//! Memory: a new index stays in memory, beyond DuckDB's reach to evict, until a `CHECKPOINT` writes it
//! to the file (measured at 16M hits: the `hits` key holds 371 MiB until then, nothing after). So each
//! phase ends with one. Side by side, builds share DuckDB's one memory limit: a build that runs out of
//! memory beside others runs again alone once the others are done and checkpointed (a failed
//! statement leaves nothing behind), so a restore that fits the limit one build at a time never fails
//! for having tried two.

use std::cmp::Reverse;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use duckdb::Connection;

use super::Import;
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot_sql::{ImportPlan, TableBuild};

/// Builds every table's key, then every index, on `builders`.
pub(super) fn build_all(
    builders: Vec<Connection>,
    plan: &ImportPlan,
    import: &Import<'_>,
) -> Result<()> {
    let tables = largest_first(plan);
    let keys: Vec<Step<'_>> = tables
        .iter()
        .filter_map(|t| t.key.as_deref().map(|sql| Step { table: t, sql }))
        .collect();
    let indexes: Vec<Step<'_>> = tables
        .iter()
        .flat_map(|t| t.indexes.iter().map(|sql| Step { table: t, sql }))
        .collect();
    let started = std::time::Instant::now();
    let builders = phase(builders, &keys, import)?;
    let keyed = started.elapsed();
    phase(builders, &indexes, import)?;
    tracing::debug!(
        database = %import.database,
        keys_s = keyed.as_secs_f64(),
        indexes_s = (started.elapsed() - keyed).as_secs_f64(),
        "built keys and indexes"
    );
    Ok(())
}

/// Writes what is built to the file, so DuckDB may evict it.
fn checkpoint(conn: &Connection, import: &Import<'_>) -> Result<()> {
    conn.execute_batch("CHECKPOINT;")
        .map_err(|e| Error::duckdb_or_memory(import.database, "CHECKPOINT", import.memory_hint, e))
}

/// One statement of a table's build.
#[derive(Clone, Copy)]
struct Step<'p> {
    table: &'p TableBuild,
    sql: &'p str,
}

impl Step<'_> {
    fn run(&self, conn: &Connection, import: &Import<'_>) -> Result<()> {
        conn.execute_batch(self.sql).map_err(|e| {
            Error::table_build(import.database, &self.table.written, import.memory_hint, e)
        })
    }
}

/// Runs `steps` spread over `builders` and hands the connections back. A connection is not `Sync`:
/// each thread owns one.
fn phase(
    builders: Vec<Connection>,
    steps: &[Step<'_>],
    import: &Import<'_>,
) -> Result<Vec<Connection>> {
    let ways = builders.len();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Vec<(Step<'_>, Error)>> = Mutex::new(Vec::new());
    let builders: Vec<Connection> = std::thread::scope(|s| {
        let threads: Vec<_> = builders
            .into_iter()
            .map(|conn| {
                let (next, stop, failed) = (&next, &stop, &failed);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(step) = steps.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        if let Err(e) = step.run(&conn, import) {
                            stop.fetch_or(e.kind() != ErrorKind::OutOfMemory, Ordering::Relaxed);
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((*step, e));
                        }
                    }
                    conn
                })
            })
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    });
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    // A failure that is not for want of memory ends the restore.
    if let Some(at) = failed
        .iter()
        .position(|(_, e)| e.kind() != ErrorKind::OutOfMemory)
    {
        return Err(failed.swap_remove(at).1);
    }
    let Some(conn) = builders.first() else {
        return Err(Error::Internal(
            "no connection left to build indexes on".into(),
        ));
    };
    checkpoint(conn, import)?;
    for (step, e) in failed {
        if ways == 1 {
            return Err(e); // it was alone already
        }
        step.run(conn, import)?;
        checkpoint(conn, import)?;
    }
    Ok(builders)
}

/// The builds, the table with the most bytes to load first (what a build costs grows with its rows).
fn largest_first(plan: &ImportPlan) -> Vec<&TableBuild> {
    let bytes = |b: &TableBuild| -> u64 {
        plan.load
            .iter()
            .filter(|l| l.table == b.table)
            .flat_map(|l| &l.files)
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    };
    let mut order: Vec<(u64, &TableBuild)> = plan.builds.iter().map(|b| (bytes(b), b)).collect();
    order.sort_by_key(|(n, _)| Reverse(*n));
    order.into_iter().map(|(_, b)| b).collect()
}
