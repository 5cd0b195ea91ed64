//! DuckDB settings changed for the time of one job and put back after it, so that a server that
//! embeds us finds its own settings again when a backup or an archive run is done with its database.

use duckdb::Connection;

use crate::quote_literal;

/// The settings a job that writes Parquet files runs under. `preserve_insertion_order = false` lets
/// a `COPY` write a table's row groups in the order its threads finish them. With it on, DuckDB holds
/// finished row groups back until the ones before them are written, and under a memory limit its
/// threads wait on each other: a 4.4M-row database exported with 2 threads in 3.7 to 5.1 s with it,
/// 2.7 to 3.1 s without, to files of the same size. Snapshots and archives promise the rows of a
/// table, not their order (SQL without `ORDER BY` does not either), and every check compares rows as
/// sets.
pub const PARQUET_WRITE_SETTINGS: [(&str, &str); 1] = [("preserve_insertion_order", "false")];

/// Runs `job` with each `(name, value)` of `settings` set on `conn`'s database, then puts back the
/// values they had, after a failure too. A setting this DuckDB does not know is skipped: there is
/// nothing to change. The outer error is a setting DuckDB refused (the ones set before it are put
/// back); a setting that cannot be put back is logged.
pub fn with_settings<T, E>(
    conn: &Connection,
    settings: &[(&str, &str)],
    job: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, E>, duckdb::Error> {
    let mut previous = Vec::new();
    for &(name, value) in settings {
        let sql = format!("SELECT CAST(current_setting({}) AS VARCHAR)", quote_literal(name));
        let Ok(before) = conn.query_row(&sql, [], |r| r.get::<_, String>(0)) else {
            continue;
        };
        if let Err(e) = conn.execute_batch(&format!("SET {name} = {}", quote_literal(value))) {
            put_back(conn, &previous);
            return Err(e);
        }
        previous.push((name, before));
    }
    let outcome = job();
    put_back(conn, &previous);
    Ok(outcome)
}

fn put_back(conn: &Connection, settings: &[(&str, String)]) {
    for (name, value) in settings {
        if let Err(e) = conn.execute_batch(&format!("SET {name} = {}", quote_literal(value))) {
            tracing::warn!(setting = name, error = %e, "could not put a DuckDB setting back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(conn: &Connection, name: &str) -> String {
        let sql = format!("SELECT CAST(current_setting('{name}') AS VARCHAR)");
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn settings_hold_during_the_job_and_come_back_after_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("SET threads = 3").unwrap();
        let wanted = [
            ("preserve_insertion_order", "false"),
            ("threads", "1"),
            ("no_such_setting_here", "1"),
        ];
        let during = with_settings(&conn, &wanted, || {
            Ok::<_, ()>((
                setting(&conn, "preserve_insertion_order"),
                setting(&conn, "threads"),
            ))
        });
        assert_eq!(
            during.unwrap().unwrap(),
            ("false".to_owned(), "1".to_owned())
        );
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
        assert_eq!(setting(&conn, "threads"), "3");
        let failed = with_settings(&conn, &wanted, || Err::<(), _>("job failed"));
        assert_eq!(failed.unwrap(), Err("job failed"));
        assert_eq!(setting(&conn, "threads"), "3", "put back after a failure too");
    }

    #[test]
    fn a_refused_setting_puts_back_the_ones_before_it() {
        let conn = Connection::open_in_memory().unwrap();
        let wanted = [("preserve_insertion_order", "false"), ("threads", "-5")];
        let refused = with_settings(&conn, &wanted, || Ok::<_, ()>(()));
        assert!(refused.is_err(), "DuckDB refuses a negative thread count");
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
    }
}
