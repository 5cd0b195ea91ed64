//! DuckDB settings changed for the time of one job and put back after it, so that a server that
//! embeds us finds its own settings again when a backup or an archive run is done with its database.

use duckdb::Connection;

use crate::quote_literal;

/// Where a setting applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The job's connection only (`SET SESSION`, undone by `RESET SESSION`): a server's own queries
    /// on the same instance never see it, and jobs side by side cannot undo each other's.
    Connection,
    /// The whole DuckDB instance, for settings that have no other scope: the value it had is set
    /// again afterwards.
    Instance,
}

/// One setting for the time of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// DuckDB's name for it: `preserve_insertion_order`.
    pub name: &'static str,
    /// Its value for the job, as `SET` takes it.
    pub value: &'static str,
    /// Where it applies.
    pub scope: Scope,
}

/// The settings a job that writes Parquet files runs under. `preserve_insertion_order = false` lets
/// a `COPY` write a table's row groups in the order its threads finish them. With it on, DuckDB holds
/// finished row groups back until the ones before them are written, and under a memory limit its
/// threads wait on each other: a 4.4M-row database exported with 2 threads in 3.7 to 5.1 s with it,
/// 2.7 to 3.1 s without, to files of the same size. Snapshots and archives promise the rows of a
/// table, not their order (SQL without `ORDER BY` does not either), and every check compares rows as
/// sets.
pub const PARQUET_WRITE_SETTINGS: [Setting; 1] = [Setting {
    name: "preserve_insertion_order",
    value: "false",
    scope: Scope::Connection,
}];

/// Runs `job` with `settings` in place on `conn`, then puts back what they were, after a failure or a
/// panic too. Call it outside any transaction: a statement that fails inside one aborts it, and DuckDB
/// then refuses the `SET` that would put a setting back. A setting this DuckDB does not know is
/// skipped: there is nothing to change. The outer error is a setting DuckDB refused (the ones set
/// before it are put back); a setting that cannot be put back is logged.
pub fn with_settings<T, E>(
    conn: &Connection,
    settings: &[Setting],
    job: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, E>, duckdb::Error> {
    let mut changed = PutBack {
        conn,
        settings: Vec::new(),
    };
    for setting in settings {
        let Some(before) = current(conn, setting.name)? else {
            continue;
        };
        let scope = match setting.scope {
            Scope::Connection => "SESSION",
            Scope::Instance => "GLOBAL",
        };
        let (name, value) = (setting.name, quote_literal(setting.value));
        conn.execute_batch(&format!("SET {scope} {name} = {value}"))?;
        changed.settings.push((*setting, before));
    }
    Ok(job())
}

/// The value of setting `name` as `conn` sees it; `None` when this DuckDB has no such setting.
fn current(conn: &Connection, name: &str) -> Result<Option<String>, duckdb::Error> {
    let sql = "SELECT CAST(value AS VARCHAR) FROM duckdb_settings() WHERE name = ?";
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([name])?;
    match rows.next()? {
        Some(row) => Ok(Some(row.get::<_, Option<String>>(0)?.unwrap_or_default())),
        None => Ok(None),
    }
}

/// What a job changed, put back when it ends, however it ends.
struct PutBack<'a> {
    conn: &'a Connection,
    settings: Vec<(Setting, String)>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        // A job that panicked mid-transaction left it open, and DuckDB would refuse the `SET`s. (The
        // job's own transaction: `with_settings` is called outside any. With none open, DuckDB
        // refuses the `ROLLBACK` and nothing happens.)
        if std::thread::panicking() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        for (setting, before) in self.settings.iter().rev() {
            let name = setting.name;
            let sql = match setting.scope {
                Scope::Connection => format!("RESET SESSION {name}"),
                Scope::Instance => format!("SET GLOBAL {name} = {}", quote_literal(before)),
            };
            if let Err(e) = self.conn.execute_batch(&sql) {
                tracing::warn!(setting = name, error = %e, "could not put a DuckDB setting back");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(conn: &Connection, name: &str) -> String {
        current(conn, name).unwrap().unwrap()
    }

    const ORDER_OFF: Setting = PARQUET_WRITE_SETTINGS[0];
    const ONE_THREAD: Setting = Setting {
        name: "threads",
        value: "1",
        scope: Scope::Instance,
    };
    const UNKNOWN: Setting = Setting {
        name: "no_such_setting_here",
        value: "1",
        scope: Scope::Connection,
    };

    #[test]
    fn settings_hold_during_the_job_and_come_back_after_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("SET threads = 3").unwrap();
        let other = conn.try_clone().unwrap();
        let wanted = [ORDER_OFF, ONE_THREAD, UNKNOWN];
        let during = with_settings(&conn, &wanted, || {
            Ok::<_, ()>([
                setting(&conn, "preserve_insertion_order"),
                setting(&conn, "threads"),
                setting(&other, "preserve_insertion_order"),
            ])
        });
        assert_eq!(
            during.unwrap().unwrap(),
            ["false", "1", "true"],
            "another connection of the instance keeps its insertion order"
        );
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
        assert_eq!(setting(&conn, "threads"), "3");
        let failed = with_settings(&conn, &wanted, || Err::<(), _>("job failed"));
        assert_eq!(failed.unwrap(), Err("job failed"));
        assert_eq!(
            setting(&conn, "threads"),
            "3",
            "put back after a failure too"
        );
    }

    #[test]
    fn settings_come_back_after_a_failed_transaction_and_a_panic() {
        let conn = Connection::open_in_memory().unwrap();
        let wanted = [ORDER_OFF];
        let failed = with_settings(&conn, &wanted, || {
            conn.execute_batch("BEGIN TRANSACTION")?;
            let failed = conn.execute_batch("SELECT * FROM no_such_table");
            conn.execute_batch("ROLLBACK")?;
            failed
        });
        assert!(failed.unwrap().is_err());
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_settings(&conn, &wanted, || -> Result<(), ()> {
                conn.execute_batch("BEGIN TRANSACTION").unwrap();
                let _ = conn.execute_batch("SELECT * FROM no_such_table");
                panic!("job panicked in a failed transaction")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
    }

    #[test]
    fn a_refused_setting_puts_back_the_ones_before_it() {
        let conn = Connection::open_in_memory().unwrap();
        let negative = Setting {
            value: "-5",
            ..ONE_THREAD
        };
        let refused = with_settings(&conn, &[ORDER_OFF, negative], || Ok::<_, ()>(()));
        assert!(refused.is_err(), "DuckDB refuses a negative thread count");
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
    }
}
