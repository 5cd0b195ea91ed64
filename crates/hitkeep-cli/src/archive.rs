//! `hitkeep archive …`: flags in, hitkeep-service's archive operations
//! ([`hitkeep_service::Engine::archive`] and [`hitkeep_service::archives`]), their results printed.

use std::process::ExitCode;

use hitkeep_archive::SiteReport;
use hitkeep_config::Settings;
use hitkeep_service::archives::{self, ArchiveFile};
use uuid::Uuid;

use crate::EXIT_USAGE;
use crate::backup::{EXIT_FAILURE, engine, fail};

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
    let engine = engine(settings);
    let run = match runtime().block_on(engine.archive(dry_run, None)) {
        Ok(run) => run,
        Err(e) => return fail(&e.into()),
    };
    let mut failed = 0;
    for site in &run.sites {
        match site {
            Ok(report) => print_site(report, dry_run),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", crate::report::render(e));
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

fn print_site(r: &SiteReport, dry_run: bool) {
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

pub fn list(settings: &Settings, site: Option<&str>, json: bool) -> ExitCode {
    let site = match parse_site(site) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let engine = engine(settings);
    let files = match runtime().block_on(archives::list(&engine, site)) {
        Ok(files) => files,
        Err(e) => return fail(&e.into()),
    };
    let rows: Vec<serde_json::Value> = files.iter().map(file_json).collect();
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

/// One file as `archive list --json` shows it; the text output is read from the same object.
fn file_json(f: &ArchiveFile) -> serde_json::Value {
    let e = &f.entry;
    let tables: std::collections::BTreeMap<_, _> =
        e.counts.iter().filter(|(_, n)| **n > 0).collect();
    serde_json::json!({
        "site_id": f.site_id, "tenant_id": f.tenant_id, "file": f.key, "state": e.state,
        "cutoff": e.cutoff, "oldest": e.oldest, "newest": e.newest, "size": e.size,
        "rows": e.rows(), "tables": tables,
    })
}

pub fn query(settings: &Settings, site: Option<&str>, sql: &str) -> ExitCode {
    let site = match parse_site(site) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let engine = engine(settings);
    match runtime().block_on(archives::query(&engine, site, sql)) {
        Ok(result) => {
            // No header for an empty result, as before.
            if !result.rows.is_empty() {
                let mut out = result.columns.join("\t");
                out.push('\n');
                for row in &result.rows {
                    out.push_str(&row.join("\t"));
                    out.push('\n');
                }
                print!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.into()),
    }
}

pub fn restore(settings: &Settings, site: &str, from: Option<&str>, to: Option<&str>) -> ExitCode {
    let site = match parse_site(Some(site)) {
        Ok(Some(s)) => s,
        Ok(None) => unreachable!("a site was given"),
        Err(code) => return code,
    };
    let engine = engine(settings);
    match runtime().block_on(archives::restore(&engine, site, from, to)) {
        Ok(restored) => {
            if restored.retired.is_none() {
                println!(
                    "note: a partial restore leaves the files listed as the archive of record; the next run archives these rows again into a new file"
                );
            }
            for (table, n) in restored.tables.iter().filter(|(_, n)| *n > 0) {
                println!("  {table:<34} {n:>10} rows restored");
            }
            println!(
                "site {site}: {} rows restored (rows already present were skipped)",
                restored.total()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.into()),
    }
}
