//! `hitkeep recover restore-database-bundle` and `hitkeep recover import-archives`: HitKeep 2.13's
//! offline recovery tools, with its flags and output, and the same safety as `restore-backup`.
//! The work is hitkeep-service's ([`hitkeep_service::recover`]).

use std::path::Path;
use std::process::ExitCode;

use hitkeep_archive::{ImportPlan, ImportSummary};
use hitkeep_backup::BundleArtifact;
use hitkeep_config::Settings;
use hitkeep_data::TenantLayout;
use hitkeep_service::recover::BundleRestore;
use uuid::Uuid;

use crate::EXIT_USAGE;
use crate::backup::{EXIT_FAILURE, confirm, engine, fail};

/// HitKeep's prompt for both commands.
const PROMPT: &str = "Type \"yes\" to confirm: ";

/// Refuses (exit 1) while another process, usually the HitKeep server, holds the database, from
/// this PID namespace or another (a container): `check` is the service's answer.
fn refuse_if_in_use(check: hitkeep_service::Result<()>) -> Result<(), ExitCode> {
    let Err(e) = check else {
        return Ok(());
    };
    match crate::restore::held(&e) {
        Some((db, holder)) => {
            eprintln!(
                "error: {} is in use by another process ({holder}); stop the HitKeep server first: nothing was changed",
                db.display()
            );
            Err(ExitCode::from(EXIT_FAILURE))
        }
        None => Err(fail(&e.into())),
    }
}

pub fn restore_database_bundle(settings: &Settings, from: &Path, yes: bool) -> ExitCode {
    let job = match hitkeep_service::recover::plan_bundle(&engine(settings), from) {
        Ok(job) => job,
        Err(e) => {
            eprintln!(
                "error: invalid recovery bundle: {}",
                crate::report::render(&e)
            );
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    print_bundle(&job, from);
    if let Err(code) = refuse_if_in_use(job.check_target_free()) {
        return code;
    }
    if !yes {
        if let Err(code) = confirm(PROMPT, "restore-database-bundle") {
            return code;
        }
        println!();
    }
    match job.execute() {
        Ok(outcome) => {
            if let Some(aside) = &outcome.aside {
                println!("  Existing DB renamed to {}", aside.display());
            }
            println!("Database recovery bundle restored successfully.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: restoring the database recovery bundle failed: {}",
                crate::report::render(&e)
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_bundle(job: &BundleRestore, from: &Path) {
    let bundle = job.bundle();
    println!("HitKeep Recovery — Restore Database Bundle");
    println!("{}", "=".repeat(42));
    println!("Source:    {}", from.display());
    println!("Target DB: {}", job.target().display());
    let artifacts: Vec<&BundleArtifact> = std::iter::once(&bundle.database)
        .chain(&bundle.wal)
        .collect();
    let listed: Vec<String> = artifacts
        .iter()
        .map(|a| format!("{} ({} bytes)", a.name, a.original_size))
        .collect();
    println!("Artifacts: {}", listed.join(", "));
    println!();
    println!("This restores the exact pre-recovery database and WAL state.");
    println!(
        "It may intentionally restore the original DuckDB failure for rollback or forensic work."
    );
    println!();
}

pub fn import_archives(settings: &Settings, tenant: Option<&str>, yes: bool) -> ExitCode {
    let tenant = match tenant.map(Uuid::parse_str).transpose() {
        Ok(t) => t,
        Err(_) => {
            eprintln!(
                "error: -tenant {:?} is not a UUID (e.g. 5c6644da-ef00-45e6-825d-c755d19d7f9f)",
                tenant.unwrap_or_default()
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let engine = engine(settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(async {
        let job = match hitkeep_service::recover::plan_import(&engine, tenant).await {
            Ok(job) => job,
            Err(e) => return fail(&e.into()),
        };
        let plan = job.plan();
        if plan.files.is_empty() {
            println!(
                "No retention archives found for tenant {} under {}. Nothing to do.",
                plan.tenant,
                job.location()
            );
            return ExitCode::SUCCESS;
        }
        print_plan(plan, job.location());
        if let Err(code) = refuse_if_in_use(job.check_target_free()) {
            return code;
        }
        if !yes {
            if let Err(code) = confirm(PROMPT, "import-archives") {
                return code;
            }
            println!();
        }
        match job.execute().await {
            Ok(summary) => {
                print_summary(&summary);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.into()),
        }
    })
}

fn print_plan(plan: &ImportPlan, archive: &hitkeep_config::Location) {
    println!("HitKeep Recovery — Import Retention Archives");
    println!("{}", "=".repeat(45));
    let default = if plan.is_default { " (default)" } else { "" };
    println!("Tenant:    {}{default}", plan.tenant);
    if plan.is_default && plan.layout == TenantLayout::PreSplit {
        println!(
            "Target DB: {} (pre-split install: the default tenant's analytics live in the shared database)",
            plan.target.display()
        );
    } else {
        println!("Tenant DB: {}", plan.target.display());
    }
    println!(
        "Archives:  {} parquet file(s) under {archive}",
        plan.files.len()
    );
    let checked = plan.checked();
    if checked == plan.files.len() {
        println!("Checked:   every file against the size and SHA-256 its ledger recorded");
    } else {
        println!(
            "Checked:   {checked} of them against the size and SHA-256 their ledger recorded; the others (HitKeep's own, or archived before hitkeep recorded one) are read as they are"
        );
    }
    if !plan.unreadable_ledgers.is_empty() {
        println!(
            "Ledgers:   {} did not parse (the log says why); what they record is read unchecked",
            plan.unreadable_ledgers.len()
        );
    }
    println!();
    println!("Rows already present are kept once; rows whose site or parent row no longer");
    println!("exists are skipped. HitKeep must be stopped.");
    println!();
}

fn print_summary(summary: &ImportSummary) {
    println!("✓ Imported {} archive file(s)", summary.files);
    for (table, c) in &summary.tables {
        if c.imported + c.present + c.skipped == 0 {
            continue;
        }
        println!(
            "  {table:<32} {:>8} imported {:>8} already present {:>8} skipped",
            c.imported, c.present, c.skipped
        );
    }
    if summary.tables.values().any(|c| c.skipped > 0) {
        println!(
            "Skipped rows belong to a site or parent row that no longer exists, or to a table this database lacks."
        );
    }
}
