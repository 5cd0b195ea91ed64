//! `hitkeep archive …`: wiring settings to hitkeep-archive.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use hitkeep_archive::{ArchiveOptions, files, ledgers, local_copies, restore_rows};
use hitkeep_config::Settings;
use hitkeep_data::OpenMode;
use hitkeep_storage::Storage;
use uuid::Uuid;

use crate::EXIT_USAGE;
use crate::backup::{EXIT_FAILURE, fail, layout};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn parse_site(site: Option<&str>) -> Result<Option<Uuid>, ExitCode> {
    site.map(|s| {
        Uuid::parse_str(s).map_err(|_| {
            eprintln!("error: --site {s:?} is not a site id (a UUID such as 5c6644da-ef00-45e6-825d-c755d19d7f9f)");
            ExitCode::from(EXIT_USAGE)
        })
    })
    .transpose()
}

pub fn run(settings: &Settings, dry_run: bool) -> ExitCode {
    let outcome = runtime().block_on(async {
        let storage = Storage::open(&settings.archive, &settings.s3).await?;
        let options = ArchiveOptions::for_layout(&layout(settings), dry_run);
        anyhow::Ok(hitkeep_archive::run(&storage, &layout(settings), &options).await?)
    });
    let reports = match outcome {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut failed = 0;
    for report in &reports {
        match report {
            Ok(r) => {
                let rows: u64 = r.counts.values().sum();
                let tenant = r
                    .policy
                    .tenant_id
                    .map_or_else(|| "default".to_owned(), |t| t.to_string());
                for note in &r.recovered {
                    println!(
                        "site {} (tenant {tenant}): recovered: {note}",
                        r.policy.site_id
                    );
                }
                match (&r.file, dry_run) {
                    (_, true) => {
                        println!(
                            "site {} (tenant {tenant}), {} days, before {}: {rows} rows would be archived",
                            r.policy.site_id, r.policy.days, r.cutoff
                        );
                        for (table, n) in r.counts.iter().filter(|(_, n)| **n > 0) {
                            println!("  {table:<34} {n:>10}");
                        }
                    }
                    (Some(file), false) => println!(
                        "site {} (tenant {tenant}): {rows} rows archived to {file} (before {})",
                        r.policy.site_id, r.cutoff
                    ),
                    (None, false) => println!(
                        "site {} (tenant {tenant}): nothing expired",
                        r.policy.site_id
                    ),
                }
                if r.dirty_buckets_pruned > 0 {
                    println!(
                        "site {} (tenant {tenant}): {} expired rollup_dirty_buckets markers deleted (HitKeep deletes them, it does not archive them)",
                        r.policy.site_id, r.dirty_buckets_pruned
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

pub fn list(settings: &Settings, site: Option<&str>, json: bool) -> ExitCode {
    let site = match parse_site(site) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let outcome = runtime().block_on(async {
        let storage = Storage::open_existing(&settings.archive, &settings.s3).await?;
        anyhow::Ok(ledgers(&storage).await?)
    });
    let ledgers = match outcome {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let mut rows = Vec::new();
    for (dir, ledger) in ledgers
        .iter()
        .filter(|(_, l)| site.is_none_or(|s| s == l.site_id))
    {
        for e in &ledger.entries {
            let key = if dir.is_empty() {
                e.file.clone()
            } else {
                format!("{dir}/{}", e.file)
            };
            rows.push(serde_json::json!({
                "site_id": ledger.site_id, "tenant_id": ledger.tenant_id, "file": key, "state": e.state,
                "cutoff": e.cutoff, "oldest": e.oldest, "newest": e.newest, "size": e.size,
                "rows": e.rows(), "tables": e.counts.iter().filter(|(_, n)| **n > 0).collect::<std::collections::BTreeMap<_, _>>(),
            }));
        }
    }
    if json {
        println!("{:#}", serde_json::Value::Array(rows));
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("no archive files in {}", settings.archive);
    }
    for r in &rows {
        println!(
            "{}  site {}  tenant {}  {}",
            r["file"].as_str().unwrap_or_default(),
            r["site_id"].as_str().unwrap_or_default(),
            r["tenant_id"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default()
        );
        println!(
            "  {} .. {}  {} rows  {} bytes",
            r["oldest"].as_str().unwrap_or("-"),
            r["newest"].as_str().unwrap_or("-"),
            r["rows"],
            r["size"]
        );
        if let Some(tables) = r["tables"].as_object() {
            for (t, n) in tables {
                println!("    {t:<34} {n:>10}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Local copies of the committed files for `site` (all sites when `None`).
async fn archive_paths(settings: &Settings, site: Option<Uuid>) -> Result<Vec<std::path::PathBuf>> {
    let storage = Storage::open_existing(&settings.archive, &settings.s3).await?;
    let keys: Vec<String> = files(&storage, site)
        .await?
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    let cache = settings.data_path.join(".hitkeep-archive-cache");
    Ok(local_copies(&storage, &keys, &cache).await?)
}

pub fn query(settings: &Settings, site: Option<&str>, sql: &str) -> ExitCode {
    let site = match parse_site(site) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let outcome = runtime().block_on(archive_paths(settings, site)).and_then(|paths| {
        let conn = duckdb::Connection::open_in_memory()?;
        hitkeep_archive::create_view(&conn, &paths)?;
        if let Some(site) = site {
            // Several sites can share files on older layouts: the view shows only the one asked for.
            conn.execute_batch(&format!("CREATE OR REPLACE TEMP VIEW archive AS SELECT * FROM read_parquet([{}], union_by_name = true) WHERE site_id = '{site}'", paths.iter().map(|p| format!("'{}'", p.display().to_string().replace('\'', "''"))).collect::<Vec<_>>().join(", ")))?;
        }
        let mut stmt = conn.prepare(sql).context("the query")?;
        let mut rows = stmt.query([]).context("the query")?;
        let mut out = String::new();
        let mut header = false;
        while let Some(row) = rows.next()? {
            let stmt = row.as_ref();
            if !header {
                out.push_str(&stmt.column_names().join("\t"));
                out.push('\n');
                header = true;
            }
            let n = stmt.column_count();
            let cells: Vec<String> = (0..n).map(|i| row.get::<_, duckdb::types::Value>(i).map(|v| show(&v)).unwrap_or_default()).collect();
            out.push_str(&cells.join("\t"));
            out.push('\n');
        }
        anyhow::Ok(out)
    });
    match outcome {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn show(v: &duckdb::types::Value) -> String {
    use duckdb::types::Value as V;
    match v {
        V::Null => "NULL".to_owned(),
        V::Text(s) => s.clone(),
        other => format!("{other:?}").split_once('(').map_or_else(
            || format!("{other:?}"),
            |(_, rest)| rest.trim_end_matches(')').to_owned(),
        ),
    }
}

pub fn restore(settings: &Settings, site: &str, from: Option<&str>, to: Option<&str>) -> ExitCode {
    let site = match parse_site(Some(site)) {
        Ok(Some(s)) => s,
        Ok(None) => unreachable!("a site was given"),
        Err(code) => return code,
    };
    let layout = layout(settings);
    let outcome = runtime()
        .block_on(async {
            let storage = Storage::open_existing(&settings.archive, &settings.s3).await?;
            // The ledger knows whose database the rows came from, even if the site's retention is off now.
            let tenant = ledgers(&storage)
                .await?
                .into_iter()
                .find(|(_, l)| l.site_id == site)
                .map(|(_, l)| l.tenant_id);
            anyhow::Ok((tenant, archive_paths(settings, Some(site)).await?))
        })
        .and_then(|(tenant, paths)| {
            // The same rule as archiving: the default tenant's rows go to the shared database before
            // HitKeep's split and to its own database after; any other tenant must have its database,
            // or the rows would land where the server never reads them.
            let shared = layout.open(&layout.db_path, OpenMode::Existing)?;
            let default = hitkeep_archive::default_tenant(&shared);
            let (split, _) = hitkeep_data::detect_layout(&shared)?;
            let path = layout.analytics_db(split, default, tenant);
            let conn = if path == layout.db_path {
                shared
            } else {
                layout
                    .open(&path, OpenMode::Existing)
                    .with_context(|| format!("the analytics database {}", path.display()))?
            };
            if paths.is_empty() {
                return anyhow::Ok(Vec::new());
            }
            anyhow::Ok(restore_rows(&conn, &paths, from, to)?)
        });
    let outcome = outcome.and_then(|counts| {
        if from.is_none() && to.is_none() {
            runtime().block_on(async {
                let storage = Storage::open_existing(&settings.archive, &settings.s3).await?;
                anyhow::Ok(hitkeep_archive::mark_restored(&storage, site).await?)
            })?;
        } else {
            println!("note: a partial restore leaves the files listed as the archive of record; the next run archives these rows again into a new file");
        }
        anyhow::Ok(counts)
    });
    match outcome {
        Ok(counts) => {
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            for (table, n) in counts.iter().filter(|(_, n)| *n > 0) {
                println!("  {table:<34} {n:>10} rows restored");
            }
            println!("site {site}: {total} rows restored (rows already present were skipped)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
