//! `hitkeep recover restore-backup`: HitKeep's offline restore, with its flags and output, made safe.

use std::process::ExitCode;

use hitkeep_backup::{Catalog, RestorePlan, RestoreSelection, SnapshotId};
use hitkeep_config::{Location, Settings};
use hitkeep_data::DataLayout;
use hitkeep_storage::Storage;
use uuid::Uuid;

use crate::EXIT_USAGE;
use crate::backup::{EXIT_FAILURE, confirm, fail};

/// The command's own flags (the S3 flags, `-db` and `-data-path` are the global setting flags).
#[derive(Debug)]
pub struct Args<'a> {
    pub from: &'a str,
    pub snapshot: Option<&'a str>,
    pub source: Option<&'a str>,
    pub tenants: &'a [String],
    pub shared_only: bool,
    pub dry_run: bool,
    pub yes: bool,
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

pub fn restore_backup(settings: &Settings, args: &Args<'_>) -> ExitCode {
    // Everything the user typed is checked before any I/O.
    let from: Location = match args.from.parse() {
        Ok(l) => l,
        Err(e) => return usage_error(&format!("-from {:?}: {e}", args.from)),
    };
    let snapshot = match args.snapshot.filter(|s| *s != "latest") {
        None => None,
        Some(s) => match s.parse::<SnapshotId>() {
            Ok(id) => Some(id),
            Err(e) => return usage_error(&format!("-snapshot: {e}")),
        },
    };
    // Checked by the parser already; `None` means "the destination's only source".
    let source = args
        .source
        .and_then(|s| s.parse::<hitkeep_data::SourceId>().ok());
    let mut tenants = Vec::new();
    for t in args.tenants {
        match Uuid::parse_str(t) {
            Ok(id) => tenants.push(id),
            Err(_) => {
                return usage_error(&format!(
                    "-tenant {t:?} is not a UUID (e.g. 5c6644da-ef00-45e6-825d-c755d19d7f9f)"
                ));
            }
        }
    }
    let layout = crate::backup::layout(settings);
    let selection = RestoreSelection::new(args.shared_only, tenants);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(async {
        let storage = match Storage::open_existing(&from, &settings.s3).await {
            Ok(s) => s,
            Err(e) => return fail(&e.into()),
        };
        // One cycle's folders, not the whole history: finding it stays cheap with thousands of snapshots.
        let plan = match Catalog::load_cycle(&storage, snapshot, source)
            .await
            .and_then(|c| RestorePlan::new(&c, snapshot, &layout, &selection))
        {
            Ok(p) => p,
            Err(e) => return fail(&e.into()),
        };
        print_plan(&from, &plan, &layout);
        // A running server holds its databases, maybe from another container; refuse before
        // downloading anything.
        for item in &plan.items {
            match hitkeep_data::lock_holder(&item.target) {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    eprintln!(
                        "error: {} is in use by another process ({holder}); stop the HitKeep server before restoring",
                        item.target.display()
                    );
                    return ExitCode::from(EXIT_FAILURE);
                }
                Err(e) => return fail(&e.into()),
            }
        }
        if args.dry_run {
            println!("Dry run: nothing changed.");
            return ExitCode::SUCCESS;
        }
        if !args.yes {
            if let Err(code) = confirm("Type \"yes\" to confirm restore: ", "restore") {
                return code;
            }
            println!();
        }
        execute(&storage, &plan, settings.backup.concurrency.get() as usize).await
    })
}

fn print_plan(from: &Location, plan: &RestorePlan, layout: &DataLayout) {
    println!("HitKeep Recovery — Restore Backup");
    println!("{}", "=".repeat(36));
    println!("Source:     {from}");
    println!(
        "Snapshot:   {}{}",
        plan.snapshot,
        if plan.legacy {
            " (legacy: no manifest, cannot be verified)"
        } else {
            ""
        }
    );
    if let Some(source) = plan.source {
        let adopt = if layout.source_id().ok().flatten().is_none() && !plan.shared_only {
            " (this data path has none yet: it takes this one over)"
        } else {
            ""
        };
        println!("Written by: source {source}{adopt}");
    }
    println!("Target DB:  {}", layout.db_path.display());
    println!("Data Path:  {}", layout.data_path.display());
    let tenants: Vec<_> = plan
        .items
        .iter()
        .filter(|i| i.database != hitkeep_backup::Database::Shared)
        .collect();
    match plan.layout {
        Some(layout) => println!(
            "Layout:     {layout} (HitKeep {})",
            layout.hitkeep_version()
        ),
        // HitKeep Go's snapshots say nothing of it: the imported shared database is asked, before
        // anything is swapped in.
        None => println!("Layout:     read from the shared database once imported (no manifest)"),
    }
    println!("Tenants:    {} tenant database(s)", tenants.len());
    for item in &tenants {
        let default = match item.database {
            hitkeep_backup::Database::Tenant { tenant_id }
                if Some(tenant_id) == plan.default_tenant =>
            {
                ", default tenant"
            }
            _ => "",
        };
        println!(
            "  - {} ({} bytes{default})",
            item.database.folder().trim_start_matches("tenants/"),
            item.bytes
        );
    }
    for note in plan.notes() {
        println!("  note: {note}");
    }
    for (id, error) in &plan.unavailable {
        println!(
            "  ! {id} failed in this cycle ({error}); restore it from an older snapshot with -snapshot and -tenant"
        );
    }
    println!();
}

async fn execute(storage: &Storage, plan: &RestorePlan, concurrency: usize) -> ExitCode {
    let stamp = SnapshotId::now();
    let name_of = |database: hitkeep_backup::Database| match database {
        hitkeep_backup::Database::Shared => "Shared database".to_owned(),
        hitkeep_backup::Database::Tenant { tenant_id } => format!("Tenant {tenant_id}"),
    };
    // Killed restores leave full-size downloads and databases beside the targets: gone before
    // this one downloads anything, unless a running restore holds them.
    let stale = plan.remove_stale_scratch();
    for path in &stale.removed {
        println!(
            "Removed the scratch of an earlier restore: {}",
            path.display()
        );
    }
    for (path, why) in &stale.kept {
        println!("Kept {} ({why})", path.display());
    }
    // Every database is downloaded and imported before any is swapped in: a failure here (the
    // network, a damaged object) leaves all of them as they were, never a mix of old and new.
    let prepared = match plan.prepare_all(storage, stamp, concurrency).await {
        Ok(prepared) => prepared,
        Err((database, e)) => {
            // DuckDB's errors already start with the database's name; say it once.
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{database}: "))
                .unwrap_or(&message);
            eprintln!("Error restoring the {database}: {message}");
            eprintln!("\nRestore failed: nothing was changed; every database is as it was.");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Tenants first, the shared database last; a failed swap puts back those already swapped.
    match plan.commit_all(prepared, stamp) {
        Ok(outcomes) => {
            for (database, outcome) in outcomes {
                if let Some(aside) = &outcome.aside {
                    println!("  Existing DB renamed to {}", aside.display());
                }
                let rows: u64 = outcome.tables.values().sum();
                println!(
                    "{} restored to {} ({} tables, {rows} rows)",
                    name_of(database),
                    outcome.target.display(),
                    outcome.tables.len()
                );
            }
            println!("\nRestore completed successfully.");
            ExitCode::SUCCESS
        }
        Err(failed) => {
            let (database, e) = *failed;
            eprintln!("Error restoring the {database}: {e}");
            eprintln!(
                "\nRestore failed: the databases already swapped in were put back; every database is as it was."
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
