//! `hk-baseline`: the bare DuckDB operations the benchmarks measure hitkeep against, built with the same
//! DuckDB and profile as `hitkeep` so that a ratio compares our work, not two builds.
//!
//! What it will not do: anything a user needs. It is a measuring stick for `cargo xtask bench`, with
//! no checks beyond DuckDB's own.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use duckdb::Connection;
use hitkeep_archive::{Cutoff, TABLES};
use hitkeep_data::{STORAGE_VERSION, quote_ident, quote_literal};

const USAGE: &str = "usage:
  hk-baseline export OUT_DIR DB...          EXPORT DATABASE (Parquet, zstd) of each DB into OUT_DIR/<i>
  hk-baseline import EXPORT_DIR DB          IMPORT DATABASE into a new DB file (DuckDB 1.5 storage)
  hk-baseline expire DB DAYS                give one site of DB a retention of DAYS, the others none; prints its id
  hk-baseline archive DB SITE CUTOFF OUT_DIR
                                            COPY the site's rows before CUTOFF (RFC 3339, the instant
                                            `hitkeep archive run` printed) to Parquet, then DELETE them;
                                            prints rows
  hk-baseline append DB PERCENT             copy PERCENT% of the hits of DB as new hits (new ids) spread
                                            over the current month up to now";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["export", out, dbs @ ..] if !dbs.is_empty() => export(Path::new(out), dbs),
        ["import", dir, db] => import(dir, db),
        ["expire", db, days] => expire(db, days.parse().context("DAYS")?),
        ["append", db, percent] => append(db, percent.parse().context("PERCENT")?),
        ["archive", db, site, cutoff, out] => {
            let cutoff = Cutoff::at(cutoff.parse().context("CUTOFF (RFC 3339)")?);
            archive(db, site, cutoff, out)
        }
        _ => bail!("{USAGE}"),
    }
}

fn export(out: &Path, dbs: &[&str]) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for (i, db) in dbs.iter().enumerate() {
        let dir = out.join(i.to_string());
        let conn = Connection::open(db).with_context(|| format!("open {db}"))?;
        let target = dir.to_str().context("UTF-8 path")?;
        conn.execute_batch(&format!(
            "EXPORT DATABASE {} (FORMAT PARQUET, COMPRESSION ZSTD)",
            quote_literal(target)
        ))
        .with_context(|| format!("export {db}"))?;
    }
    Ok(())
}

fn import(dir: &str, db: &str) -> Result<()> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(&format!(
        "ATTACH {} AS restored (STORAGE_VERSION '{STORAGE_VERSION}'); USE restored; IMPORT DATABASE {}; CHECKPOINT;",
        quote_literal(db),
        quote_literal(dir)
    ))
    .with_context(|| format!("import {dir}"))?;
    Ok(())
}

/// New hits, as a live site writes them between two cycles: a sample of the existing ones with new
/// ids and times spread over the current month, up to now.
fn append(db: &str, percent: f64) -> Result<()> {
    let conn = Connection::open(db)?;
    conn.execute_batch(&format!(
        "INSERT INTO hits SELECT * REPLACE (
             uuid() AS id,
             date_trunc('month', now()::TIMESTAMP)
                 + to_microseconds(CAST(random() * (epoch_us(now()::TIMESTAMP) - epoch_us(date_trunc('month', now()::TIMESTAMP))) AS BIGINT))
                 AS \"timestamp\")
         FROM hits USING SAMPLE {percent} PERCENT (bernoulli);
         CHECKPOINT;"
    ))
    .context("append hits")?;
    Ok(())
}

/// The first site whose rows live in `db` (no tenant, or the default one) gets `days`; every other
/// site none, so that `hitkeep archive run` works on that site alone.
fn expire(db: &str, days: u32) -> Result<()> {
    let conn = Connection::open(db)?;
    let site: String = conn.query_row(
        "SELECT CAST(s.id AS VARCHAR) FROM sites s LEFT JOIN site_tenants st ON st.site_id = s.id
         WHERE st.tenant_id IS NULL OR st.tenant_id IN (SELECT id FROM tenants WHERE is_default)
         ORDER BY s.id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(&format!(
        "UPDATE sites SET data_retention_days = CASE WHEN CAST(id AS VARCHAR) = {} THEN {days} ELSE 0 END",
        quote_literal(&site)
    ))?;
    println!("{site}");
    Ok(())
}

/// What `hitkeep archive run` does at its core, bare: per table, COPY the expired rows to Parquet and
/// DELETE them, in one transaction. The cutoff is hitkeep's, so both remove exactly the same rows.
fn archive(db: &str, site: &str, cutoff: Cutoff, out: &str) -> Result<()> {
    let conn = Connection::open(db)?;
    std::fs::create_dir_all(out)?;
    conn.execute_batch("BEGIN TRANSACTION")?;
    let mut rows = 0u64;
    let present = hitkeep_data::user_tables(&conn)?;
    // An older schema lacks some of HitKeep 2.13's tables; hitkeep skips them too.
    for table in TABLES
        .iter()
        .filter(|t| present.iter().any(|(_, name)| name == t.name))
    {
        let filter = format!(
            "site_id = {} AND {} < {}",
            quote_literal(site),
            quote_ident(table.column),
            cutoff.bound(table.grain)
        );
        let name = quote_ident(table.name);
        let file = Path::new(out).join(format!("{}.parquet", table.name));
        conn.execute_batch(&format!(
            "COPY (SELECT * FROM {name} WHERE {filter}) TO {} (FORMAT PARQUET, COMPRESSION ZSTD)",
            quote_literal(file.to_str().context("UTF-8 path")?)
        ))?;
        let deleted = conn.execute(&format!("DELETE FROM {name} WHERE {filter}"), [])?;
        rows += deleted as u64;
    }
    conn.execute_batch("COMMIT; CHECKPOINT;")?;
    println!("{rows}");
    Ok(())
}
