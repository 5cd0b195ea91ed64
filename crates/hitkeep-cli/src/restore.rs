//! `hitkeep recover restore-backup`: HitKeep's offline restore, with its flags and output, made safe.
//! The work is hitkeep-service's ([`hitkeep_service::restore`]); this reads the flags, shows the plan,
//! asks for confirmation and shows what was done.

use std::process::ExitCode;

use hitkeep_backup::{Database, RestorePlan, RestoreSelection, SnapshotId};
use hitkeep_config::{Location, Settings};
use hitkeep_data::{DataError, DataLayout, LockHolder};
use hitkeep_service::restore::{RestoreFailure, RestoreJob, RestoreReport, RestoreStage};
use uuid::Uuid;

use crate::EXIT_USAGE;
use crate::backup::{EXIT_FAILURE, confirm, engine, fail};

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

/// The flags, checked before any I/O.
struct Request {
    from: Location,
    snapshot: Option<SnapshotId>,
    source: Option<hitkeep_data::SourceId>,
    selection: RestoreSelection,
}

fn parse(args: &Args<'_>) -> Result<Request, ExitCode> {
    let from: Location = args
        .from
        .parse()
        .map_err(|e| usage_error(&format!("-from {:?}: {e}", args.from)))?;
    let snapshot = match args.snapshot.filter(|s| *s != "latest") {
        None => None,
        Some(s) => Some(
            s.parse::<SnapshotId>()
                .map_err(|e| usage_error(&format!("-snapshot: {e}")))?,
        ),
    };
    // Checked by the parser already; `None` means "the destination's only source".
    let source = args
        .source
        .and_then(|s| s.parse::<hitkeep_data::SourceId>().ok());
    let tenants = args
        .tenants
        .iter()
        .map(|t| {
            Uuid::parse_str(t).map_err(|_| {
                usage_error(&format!(
                    "-tenant {t:?} is not a UUID (e.g. 5c6644da-ef00-45e6-825d-c755d19d7f9f)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Request {
        from,
        snapshot,
        source,
        selection: RestoreSelection::new(args.shared_only, tenants),
    })
}

pub fn restore_backup(settings: &Settings, args: &Args<'_>) -> ExitCode {
    let request = match parse(args) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let engine = engine(settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(async {
        let job = match hitkeep_service::restore::plan(
            &engine,
            &request.from,
            request.snapshot,
            request.source,
            &request.selection,
        )
        .await
        {
            Ok(job) => job,
            // A setting the restore needs (the identity of an encrypted cycle): exit 2.
            Err(e) if e.kind() == hitkeep_service::ErrorKind::Config => {
                return crate::backup::fail_service(&e);
            }
            Err(e) => return fail(&e.into()),
        };
        print_plan(&request.from, &job, engine.layout());
        // A running server holds its databases, maybe from another container; refuse before
        // downloading anything.
        if let Err(e) = job.check_targets_free() {
            return match held(&e) {
                Some((path, holder)) => {
                    eprintln!(
                        "error: {} is in use by another process ({holder}); stop the HitKeep server before restoring",
                        path.display()
                    );
                    ExitCode::from(EXIT_FAILURE)
                }
                None => fail(&e.into()),
            };
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
        match job.execute(settings.backup.concurrency.get() as usize).await {
            Ok(report) => {
                print_report(&report);
                ExitCode::SUCCESS
            }
            Err(failure) => {
                print_failure(&failure);
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
}

/// The file and its holder, when `e` is the refusal of a database another process holds.
pub(crate) fn held(e: &hitkeep_service::Error) -> Option<(&std::path::Path, &LockHolder)> {
    match e {
        hitkeep_service::Error::Data(DataError::Locked {
            path,
            holder: Some(holder),
        }) => Some((path, holder)),
        _ => None,
    }
}

fn print_plan(from: &Location, job: &RestoreJob, layout: &DataLayout) {
    let plan = job.plan();
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
        let adopt = if job.takes_over_source() {
            " (this data path has none yet: it takes this one over)"
        } else {
            ""
        };
        println!("Written by: source {source}{adopt}");
    }
    println!("Target DB:  {}", layout.db_path.display());
    println!("Data Path:  {}", layout.data_path.display());
    match plan.layout {
        Some(layout) => println!(
            "Layout:     {layout} (HitKeep {})",
            layout.hitkeep_version()
        ),
        // HitKeep Go's snapshots say nothing of it: the imported shared database is asked, before
        // anything is swapped in.
        None => println!("Layout:     read from the shared database once imported (no manifest)"),
    }
    print_tenants(plan);
    for note in job.notes() {
        println!("  note: {note}");
    }
    for (id, error) in &plan.unavailable {
        println!(
            "  ! {id} failed in this cycle ({error}); restore it from an older snapshot with -snapshot and -tenant"
        );
    }
    println!();
}

fn print_tenants(plan: &RestorePlan) {
    let tenants: Vec<_> = plan
        .items
        .iter()
        .filter(|i| i.database != Database::Shared)
        .collect();
    println!("Tenants:    {} tenant database(s)", tenants.len());
    for item in &tenants {
        let default = match item.database {
            Database::Tenant { tenant_id } if Some(tenant_id) == plan.default_tenant => {
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
}

fn print_stale_scratch(stale: &hitkeep_backup::StaleScratch) {
    for path in &stale.removed {
        println!(
            "Removed the scratch of an earlier restore: {}",
            path.display()
        );
    }
    for (path, why) in &stale.kept {
        println!("Kept {} ({why})", path.display());
    }
}

fn name_of(database: Database) -> String {
    match database {
        Database::Shared => "Shared database".to_owned(),
        Database::Tenant { tenant_id } => format!("Tenant {tenant_id}"),
    }
}

fn print_report(report: &RestoreReport) {
    print_stale_scratch(&report.stale_scratch);
    for (database, outcome) in &report.restored {
        if let Some(aside) = &outcome.aside {
            println!("  Existing DB renamed to {}", aside.display());
        }
        let rows: u64 = outcome.tables.values().sum();
        println!(
            "{} restored to {} ({} tables, {rows} rows)",
            name_of(*database),
            outcome.target.display(),
            outcome.tables.len()
        );
    }
    println!("\nRestore completed successfully.");
}

fn print_failure(failure: &RestoreFailure) {
    print_stale_scratch(&failure.stale_scratch);
    let database = failure.database;
    let message = crate::report::render(&failure.error);
    match failure.stage {
        RestoreStage::Prepare => {
            // DuckDB's errors already start with the database's name; say it once.
            let message = message
                .strip_prefix(&format!("{database}: "))
                .unwrap_or(&message);
            eprintln!("Error restoring the {database}: {message}");
            eprintln!("\nRestore failed: nothing was changed; every database is as it was.");
        }
        RestoreStage::Commit => {
            eprintln!("Error restoring the {database}: {message}");
            eprintln!(
                "\nRestore failed: the databases already swapped in were put back; every database is as it was."
            );
        }
    }
}
