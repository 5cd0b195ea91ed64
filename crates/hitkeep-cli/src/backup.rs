//! `hitkeep backup …`, `hitkeep serve` and `hitkeep demo`: wiring settings to hitkeep-backup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hitkeep_backup::{BackupOptions, Catalog, CycleReport, CycleTenants, PrunePlan, SnapshotState};
use hitkeep_config::{Location, Settings};
use hitkeep_data::{DataLayout, DuckDbLimits, OpenMode};
use hitkeep_storage::Storage;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::EXIT_USAGE;

/// A runtime failure, already reported: exit 1.
pub const EXIT_FAILURE: u8 = 1;

/// The data layout, opening databases with the configured DuckDB limits.
pub(crate) fn layout(settings: &Settings) -> DataLayout {
    DataLayout::new(&settings.db_path, &settings.data_path).with_limits(DuckDbLimits {
        memory_limit: settings.duckdb.memory_limit,
        threads: settings.duckdb.threads.map(|t| t.get()),
    })
}

/// The backup location, or the usage error that explains how to set one.
fn backup_location(settings: &Settings) -> Result<&Location, ExitCode> {
    settings.backup.location.as_ref().ok_or_else(|| {
        eprintln!("error: backups are disabled: HITKEEP_BACKUP_PATH (--backup-path) is not set\n  fix: set it to a directory or s3://bucket/prefix, e.g. HITKEEP_BACKUP_PATH=/var/lib/hitkeep/backups");
        ExitCode::from(EXIT_USAGE)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// Prints an error with its causes and returns exit status 1.
pub fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(EXIT_FAILURE)
}

pub fn demo(
    settings: &Settings,
    hits: u64,
    tenants: usize,
    release: hitkeep_data::TenantLayout,
) -> ExitCode {
    let started = std::time::Instant::now();
    let options = hitkeep_data::demo::DemoOptions::new(hits, tenants).with_layout(release);
    match hitkeep_data::demo::generate(&layout(settings), &options) {
        Ok(summary) => {
            println!(
                "demo data created in {:.1}s (HitKeep {} layout: {})",
                started.elapsed().as_secs_f64(),
                summary.layout.hitkeep_version(),
                summary.layout
            );
            println!(
                "  shared db:  {} (default tenant {})",
                settings.db_path.display(),
                summary.default_tenant
            );
            if summary.layout == hitkeep_data::TenantLayout::Split {
                let path = layout(settings).tenant_db(summary.default_tenant);
                println!("  tenant db:  {} (default tenant)", path.display());
            }
            for t in &summary.tenants {
                println!("  tenant db:  {}", layout(settings).tenant_db(*t).display());
            }
            println!(
                "  archived tenant (not backed up): {}",
                summary.archived_tenant
            );
            println!("  hits: {}", summary.hits);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.into()),
    }
}

/// One cycle plus local retention: what `backup run` and the scheduler do.
/// The daily archive job: every site's expired rows, with a failing site logged and the others done.
async fn archive_once(
    settings: &Settings,
    monitor: Option<&crate::monitor::Monitor>,
) -> Result<()> {
    let storage = Storage::open(&settings.archive, &settings.s3).await?;
    let options = hitkeep_archive::ArchiveOptions::for_layout(&layout(settings), false);
    let (mut rows, mut files, mut failures) = (0, 0, 0);
    for report in hitkeep_archive::run(&storage, &layout(settings), &options).await? {
        match report {
            Ok(r) if r.file.is_some() => {
                let n = r.counts.values().sum::<u64>();
                (rows, files) = (rows + n, files + 1);
                println!("archived {n} rows of site {}", r.policy.site_id);
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                eprintln!("error: archiving a site failed: {e}");
            }
        }
    }
    if let Some(m) = monitor {
        m.archive(rows, files, failures);
    }
    Ok(())
}

async fn backup_once(settings: &Settings, location: &Location) -> Result<CycleReport> {
    let storage = Storage::open(location, &settings.s3).await?;
    let layout = layout(settings);
    let shared = layout.open(&layout.db_path, OpenMode::Existing)?;
    let tenants = CycleTenants::discover(&layout, &shared)
        .with_context(|| format!("listing tenants in {}", layout.db_path.display()))?;
    let mut options = BackupOptions::for_layout(&layout)
        .with_concurrency(settings.backup.concurrency.get() as usize);
    if let Some(bars) = Bars::for_terminal() {
        options = options.with_progress(bars);
    }
    let report = hitkeep_backup::run_cycle(&storage, shared, tenants, &options).await?;
    // The cycle is committed whatever happens here: a failed prune is a warning, not a failed backup.
    let retention =
        (!location.is_s3() || settings.backup.prune_s3).then_some(settings.backup.retention);
    if let Err(e) = prune_after_cycle(&storage, &layout, retention, report.id).await {
        tracing::warn!(error = %format!("{e:#}"), "pruning after the cycle failed; the new snapshot is complete");
    }
    Ok(report)
}

/// After a committed cycle (the lock is free again, but this process's cycles are the only ones of
/// its source): retention when it applies, and in any case the leftovers of interrupted runs.
async fn prune_after_cycle(
    storage: &Storage,
    layout: &DataLayout,
    retention: Option<std::num::NonZeroU32>,
    id: hitkeep_backup::SnapshotId,
) -> Result<()> {
    let source = layout
        .source_id()?
        .context("the cycle created the source id")?;
    let _lock = hitkeep_backup::CycleLock::acquire(&BackupOptions::for_layout(layout).lock_file)?;
    let catalog = Catalog::load(storage).await?;
    let plan = match retention {
        Some(keep) => PrunePlan::new(&catalog, keep, Some(id), Some(source)),
        None => PrunePlan::leftovers(&catalog, id, source),
    };
    let removed = plan.execute(storage).await?;
    if !plan.is_empty() {
        tracing::info!(
            snapshots = plan.deletions.len(),
            objects = removed,
            "pruned old snapshots and leftovers of interrupted runs"
        );
    }
    sweep_partial_uploads(storage, false).await;
    Ok(())
}

/// How old an S3 multipart upload must be, by the server's clock, before it counts as a dead
/// process's: another installation's cycle may be uploading to the same destination, and a large
/// file on a slow link takes hours. Local partial uploads are told apart by their owner's lock instead.
const PARTIAL_UPLOAD_AGE: Duration = Duration::from_secs(6 * 3600);

/// Removes what killed processes left half-uploaded, saying what went (on stdout when `print`, in the
/// log otherwise); a failure is a warning, never a failed backup or prune.
async fn sweep_partial_uploads(storage: &Storage, print: bool) {
    let report = match storage.sweep_partial_uploads(PARTIAL_UPLOAD_AGE).await {
        Ok(r) => r,
        Err(e) => {
            let hint = e
                .hint()
                .map(|h| format!("\n  hint: {h}"))
                .unwrap_or_default();
            tracing::warn!("could not look for partial uploads of killed runs: {e}{hint}");
            return;
        }
    };
    for p in &report.removed {
        tracing::info!(key = p.key, bytes = ?p.bytes, "removed a partial upload left by a killed run");
    }
    for (p, e) in &report.failed {
        tracing::warn!(key = p.key, error = %e, "could not remove a partial upload left by a killed run");
    }
    if print && !report.removed.is_empty() {
        println!(
            "removed {} partial upload(s) left by killed runs ({} bytes)",
            report.removed.len(),
            report.bytes_removed()
        );
    }
}

fn print_report(report: &CycleReport) {
    println!(
        "snapshot {} committed: {} files, {} bytes",
        report.id, report.files, report.bytes
    );
    println!(
        "  shared: {} tables, {} rows ({})",
        report.shared.tables.len(),
        report.shared.total_rows(),
        layout_note(&report.shared)
    );
    for t in &report.shared.tenants {
        let state = match &t.state {
            hitkeep_backup::manifest::TenantState::Complete { .. } => "complete".to_owned(),
            hitkeep_backup::manifest::TenantState::Failed { error } => format!("FAILED: {error}"),
            hitkeep_backup::manifest::TenantState::Skipped { reason } => {
                format!("skipped: {reason}")
            }
        };
        let default = if Some(t.tenant_id) == report.shared.default_tenant {
            " (default)"
        } else {
            ""
        };
        println!("  tenant {}{default}: {state}", t.tenant_id);
    }
}

/// How a cycle's layout reads for people: where the default tenant's analytics were backed up.
pub(crate) fn layout_note(shared: &hitkeep_backup::Manifest) -> String {
    match shared.layout {
        Some(hitkeep_data::TenantLayout::Split) => {
            "layout split: HitKeep 2.13, the default tenant in its own database".to_owned()
        }
        Some(hitkeep_data::TenantLayout::PreSplit) => {
            "layout pre-split: the default tenant's analytics in the shared database".to_owned()
        }
        None => "layout not recorded".to_owned(),
    }
}

pub fn run(settings: &Settings) -> ExitCode {
    let location = match backup_location(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let status = StatusFile::new(settings);
    let outcome = runtime().block_on(backup_once(settings, location));
    status.record(settings, &outcome, None);
    match outcome {
        Ok(report) => {
            print_report(&report);
            if report.is_success() {
                ExitCode::SUCCESS
            } else {
                let failed: Vec<String> = report
                    .failed_tenants()
                    .map(|(id, _)| id.to_string())
                    .collect();
                eprintln!(
                    "error: backup cycle {} failed for tenant(s) {}",
                    report.id,
                    failed.join(", ")
                );
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e) => fail(&e),
    }
}

pub fn list(settings: &Settings, json: bool) -> ExitCode {
    let location = match backup_location(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let catalog = match runtime().block_on(async {
        let storage = Storage::open_existing(location, &settings.s3).await?;
        anyhow::Ok(Catalog::load(&storage).await?)
    }) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let latest = latest_per_source(&catalog);
    let rows: Vec<serde_json::Value> = catalog
        .databases
        .iter()
        .flat_map(|db| db.snapshots.iter().map(move |s| (db.database, s)))
        .map(|(database, s)| {
            serde_json::json!({
                "database": database.folder(),
                "snapshot_id": s.id,
                "state": s.state,
                "latest": database == hitkeep_backup::Database::Shared && latest.contains(&s.id),
                "source": s.source,
                "sequence": s.sequence(),
                "in_future": s.in_future(),
                "size": s.size,
                "objects": s.objects,
                "rows": s.manifest.as_ref().map(|m| m.total_rows()),
                "layout": s.manifest.as_ref().and_then(|m| m.layout),
                "created_at": s.manifest.as_ref().map(|m| m.created_at.to_string()),
            })
        })
        .collect();
    if json {
        println!("{:#}", serde_json::Value::Array(rows));
        return ExitCode::SUCCESS;
    }
    if rows.is_empty() {
        println!("no snapshots in {location}");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<46} {:<20} {:<11} {:<8} {:>12} {:>12}",
        "DATABASE", "SNAPSHOT", "STATE", "SOURCE", "BYTES", "ROWS"
    );
    for (db, s) in catalog
        .databases
        .iter()
        .flat_map(|db| db.snapshots.iter().map(move |s| (db, s)))
    {
        let state = match &s.state {
            SnapshotState::Complete => "complete".to_owned(),
            SnapshotState::Incomplete => "incomplete".to_owned(),
            SnapshotState::Legacy => "legacy".to_owned(),
            SnapshotState::Corrupt(why) => format!("corrupt ({why})"),
        };
        let rows = s
            .manifest
            .as_ref()
            .map_or_else(|| "-".to_owned(), |m| m.total_rows().to_string());
        let mut mark = match s.manifest.as_ref().and_then(|m| m.layout) {
            Some(layout) if db.database == hitkeep_backup::Database::Shared => {
                format!("  {layout}")
            }
            _ => String::new(),
        };
        if db.database == hitkeep_backup::Database::Shared && latest.contains(&s.id) {
            mark.push_str("  <- latest");
        }
        if s.in_future() {
            mark.push_str("  (in the future: written by a clock set ahead?)");
        }
        let source = s.source.map_or_else(|| "-".to_owned(), |s| s.short());
        println!(
            "{:<46} {:<20} {:<11} {:<8} {:>12} {:>12}{mark}",
            db.database.folder(),
            s.id.to_string(),
            state,
            source,
            s.size,
            rows
        );
    }
    ExitCode::SUCCESS
}

/// The newest committed cycle of each source writing to the destination (one, usually).
fn latest_per_source(catalog: &Catalog) -> Vec<hitkeep_backup::SnapshotId> {
    let shared = catalog.snapshots(hitkeep_backup::Database::Shared);
    let mut sources: Vec<_> = shared.iter().filter_map(|s| s.source).collect();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        return catalog
            .latest_committed()
            .map(|s| s.id)
            .into_iter()
            .collect();
    }
    sources
        .into_iter()
        .filter_map(|source| catalog.latest_committed_of(source).map(|s| s.id))
        .collect()
}

pub fn verify(settings: &Settings, snapshot: Option<&str>, deep: bool, json: bool) -> ExitCode {
    let location = match backup_location(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let outcome = runtime().block_on(async {
        let storage = Storage::open_existing(location, &settings.s3).await?;
        let catalog = Catalog::load(&storage).await?;
        // "latest" is this installation's newest cycle when the destination holds several.
        let source = layout(settings).source_id().ok().flatten();
        let id = catalog.resolve_for(snapshot, source)?.id;
        // Next to the data, where there is room for a snapshot, in a folder of this run's own.
        let scratch = layout(settings).claim_staging(hitkeep_data::JobKind::Verify)?;
        anyhow::Ok(
            hitkeep_backup::verify_snapshot(&storage, &catalog, id, deep, scratch.path()).await?,
        )
    });
    let report = match outcome {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        println!(
            "{:#}",
            serde_json::json!({ "ok": report.is_ok(), "report": report })
        );
    } else {
        println!(
            "snapshot {}{}, layout {}",
            report.snapshot_id,
            if report.deep { " (deep)" } else { "" },
            report
                .layout
                .map_or_else(|| "not recorded".to_owned(), |l| l.to_string())
        );
        for db in &report.databases {
            let verdict = if db.problems.is_empty() {
                "ok"
            } else {
                "PROBLEMS"
            };
            println!(
                "  {:<44} {verdict}: {} files, {} bytes, {} tables compared",
                db.database.folder(),
                db.files,
                db.bytes,
                db.tables
            );
            for p in &db.problems {
                println!("    - {p}");
            }
        }
    }
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

pub fn prune(settings: &Settings, yes: bool, dry_run: bool) -> ExitCode {
    let location = match backup_location(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let outcome = runtime().block_on(async {
        let storage = Storage::open_existing(location, &settings.s3).await?;
        // Holding the cycle lock, this source's unfinished snapshots are all leftovers.
        let layout = layout(settings);
        let _lock =
            hitkeep_backup::CycleLock::acquire(&BackupOptions::for_layout(&layout).lock_file)?;
        let catalog = Catalog::load(&storage).await?;
        let source = layout.source_id()?;
        let sourced = catalog
            .databases
            .iter()
            .flat_map(|d| &d.snapshots)
            .any(|s| s.source.is_some());
        if source.is_none() && sourced {
            anyhow::bail!(
                "prune removes only this installation's snapshots, and {} has no source id (no backup ran from this data path)\n  hint: run prune where the backups are made (the same HITKEEP_DATA_PATH)",
                layout.data_path.display()
            );
        }
        let protect = match source {
            Some(s) => catalog.latest_committed_of(s),
            None => catalog.latest_committed(),
        }
        .map(|s| s.id);
        let plan = PrunePlan::new(&catalog, settings.backup.retention, protect, source);
        if plan.is_empty() {
            println!(
                "nothing to prune: every database has at most {} snapshots",
                settings.backup.retention
            );
            if !dry_run {
                sweep_partial_uploads(&storage, true).await;
            }
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        println!(
            "keeping the newest {} snapshots per database in {location}; deleting:",
            settings.backup.retention
        );
        for d in &plan.deletions {
            println!(
                "  {:<46} {}  {:>12} bytes  ({})",
                d.database.folder(),
                d.id,
                d.size,
                d.reason
            );
        }
        if dry_run {
            println!("dry run: nothing deleted");
            return Ok(ExitCode::SUCCESS);
        }
        if !yes && let Err(code) = confirm("Type \"yes\" to confirm prune: ", "prune") {
            return Ok(code);
        }
        let objects = plan.execute(&storage).await?;
        println!(
            "deleted {} snapshots ({objects} objects); a fresh listing confirms they are gone",
            plan.deletions.len()
        );
        sweep_partial_uploads(&storage, true).await;
        Ok(ExitCode::SUCCESS)
    });
    outcome.unwrap_or_else(|e| fail(&e))
}

/// Asks on stdin before something destructive. Only the exact answer `yes` goes on; any other
/// answer aborts (exit 1: a script must not read "nothing happened" as success); no input at all
/// (a cron job, stdin closed) is a usage error naming `-yes` (exit 2).
pub fn confirm(prompt: &str, what: &str) -> std::result::Result<(), ExitCode> {
    use std::io::Write as _;
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    match std::io::stdin().read_line(&mut answer) {
        Ok(0) | Err(_) => {
            println!();
            eprintln!(
                "error: {what} needs confirmation and there is no input to read it from\n  fix: pass -yes to confirm without asking"
            );
            Err(ExitCode::from(EXIT_USAGE))
        }
        Ok(_) if answer.trim() == "yes" => Ok(()),
        Ok(_) => {
            println!("Aborted: nothing changed.");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

pub fn lifecycle(settings: &Settings) -> ExitCode {
    let location = match backup_location(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Location::S3(s3) = location else {
        eprintln!(
            "error: lifecycle rules are an S3 feature; HITKEEP_BACKUP_PATH is the local directory {location}, which `hitkeep backup run` prunes itself"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if s3.prefix().is_empty() {
        eprintln!(
            "error: HITKEEP_BACKUP_PATH {location} is a whole bucket; a lifecycle rule for it would expire every object in the bucket\n  fix: keep backups under a prefix, e.g. s3://{}/hitkeep/backups",
            s3.bucket()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    // Lifecycle rules expire by age, not count: keep a day more than the retention covers, so the rule
    // never removes one of the newest N.
    let minutes =
        settings.backup.interval.as_secs() / 60 * u64::from(settings.backup.retention.get());
    let days = minutes.div_ceil(24 * 60) + 1;
    let prefix = if s3.prefix().is_empty() {
        String::new()
    } else {
        format!("{}/", s3.prefix())
    };
    let rules = serde_json::json!({
        "Rules": [{
            "ID": "hitkeep-backup-retention",
            "Filter": { "Prefix": prefix },
            "Status": "Enabled",
            "Expiration": { "Days": days },
            "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 }
        }]
    });
    println!("{rules:#}");
    eprintln!(
        "# {} snapshots every {} min cover {minutes} min; objects expire after {days} days.\n# Caution: expiry goes by age, not count. If backups stop for {days} days, every snapshot expires; watch `hitkeep backup status`.\n# Apply with: aws s3api put-bucket-lifecycle-configuration --bucket {} --lifecycle-configuration file://lifecycle.json",
        settings.backup.retention,
        settings.backup.interval.as_secs() / 60,
        s3.bucket()
    );
    ExitCode::SUCCESS
}

/// The scheduler's last results, kept in a small JSON file under the data path.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Status {
    enabled: bool,
    destination: Option<String>,
    interval_min: u64,
    retention: u32,
    last_backup: Option<String>,
    last_snapshot: Option<String>,
    next_backup: Option<String>,
    last_failed_at: Option<String>,
    last_error: Option<String>,
    consecutive_failures: u32,
    recent_failures: u32,
    /// The last cycle's layout (`split` or `pre-split`).
    #[serde(default)]
    last_layout: Option<String>,
    /// Tenants the last cycle could not back up because their database file is missing, with the path.
    #[serde(default)]
    last_skipped: Vec<String>,
}

struct StatusFile(PathBuf);

impl StatusFile {
    fn new(settings: &Settings) -> Self {
        StatusFile(settings.data_path.join(".hitkeep-backup-status.json"))
    }

    fn load(&self) -> Status {
        std::fs::read(&self.0)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn record(&self, settings: &Settings, outcome: &Result<CycleReport>, next: Option<Timestamp>) {
        let mut status = self.load();
        let now = Timestamp::now().to_string();
        status.enabled = settings.backup.location.is_some();
        status.destination = settings.backup.location.as_ref().map(ToString::to_string);
        status.interval_min = settings.backup.interval.as_secs() / 60;
        status.retention = settings.backup.retention.get();
        status.next_backup = next.map(|t| t.to_string());
        let error = match outcome {
            Ok(report) if report.is_success() => None,
            Ok(report) => Some(format!(
                "tenant backups failed: {}",
                report
                    .failed_tenants()
                    .map(|(id, e)| format!("{id}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Ok(report) = outcome {
            status.last_snapshot = Some(report.id.to_string());
            status.last_layout = report.shared.layout.map(|l| l.to_string());
            status.last_skipped = report
                .skipped_tenants()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect();
        }
        match error {
            None => {
                status.last_backup = Some(now);
                status.last_error = None;
                status.consecutive_failures = 0;
            }
            Some(e) => {
                status.last_failed_at = Some(now);
                status.last_error = Some(e);
                status.consecutive_failures += 1;
                status.recent_failures += 1;
            }
        }
        let write = std::fs::create_dir_all(&settings.data_path).and_then(|()| {
            std::fs::write(
                &self.0,
                serde_json::to_vec_pretty(&status).unwrap_or_default(),
            )
        });
        if let Err(e) = write {
            tracing::warn!(path = %self.0.display(), error = %e, "could not write the backup status file");
        }
    }
}

pub fn status(settings: &Settings, json: bool) -> ExitCode {
    let file = StatusFile::new(settings);
    let status = file.load();
    if json {
        println!("{:#}", serde_json::to_value(&status).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!(
        "enabled:              {}",
        settings.backup.location.is_some()
    );
    println!(
        "destination:          {}",
        settings
            .backup
            .location
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    );
    println!(
        "last backup:          {} ({})",
        show(&status.last_backup),
        show(&status.last_snapshot)
    );
    println!("layout:               {}", show(&status.last_layout));
    for skipped in &status.last_skipped {
        println!("skipped tenant:       {skipped}");
    }
    println!("next backup:          {}", show(&status.next_backup));
    println!("last failure:         {}", show(&status.last_failed_at));
    println!("last error:           {}", show(&status.last_error));
    println!("consecutive failures: {}", status.consecutive_failures);
    ExitCode::SUCCESS
}

/// How long after start the first cycle runs: soon, but not in the middle of start-up.
const FIRST_RUN_DELAY: Duration = Duration::from_secs(5);

/// The scheduler: cycles one after another (never overlapping), until SIGINT or SIGTERM.
pub fn serve(settings: &Settings) -> ExitCode {
    match &settings.backup.location {
        Some(location) => println!(
            "backup scheduler: {location} every {} min, keeping {}",
            settings.backup.interval.as_secs() / 60,
            settings.backup.retention
        ),
        None => println!("backups are disabled (HITKEEP_BACKUP_PATH is not set)"),
    }
    println!("retention archives: {} daily", settings.archive);
    match runtime().block_on(schedule(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// When the daily archive job first runs after start.
const ARCHIVE_FIRST_DELAY: Duration = Duration::from_secs(60);
/// How often it runs.
const ARCHIVE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The jobs the scheduler runs, one at a time so they never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Backup,
    Archive,
}

async fn schedule(settings: &Settings) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let status = StatusFile::new(settings);
    let monitor = match settings.http_addr {
        Some(addr) => {
            let monitor = crate::monitor::Monitor::new(settings);
            crate::monitor::serve(addr, monitor.clone())
                .await
                .with_context(|| format!("serving HITKEEP_HTTP_ADDR {addr}"))?;
            Some(monitor)
        }
        None => None,
    };
    let start = tokio::time::Instant::now();
    let mut next_backup = settings
        .backup
        .location
        .as_ref()
        .map(|_| start + FIRST_RUN_DELAY);
    let mut next_archive = start + ARCHIVE_FIRST_DELAY;
    loop {
        let (job, at) = match next_backup {
            Some(b) if b <= next_archive => (Job::Backup, b),
            _ => (Job::Archive, next_archive),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if job == Job::Archive {
            next_archive = tokio::time::Instant::now() + ARCHIVE_INTERVAL;
            let stop = tokio::select! {
                r = archive_once(settings, monitor.as_deref()) => { if let Err(e) = r { eprintln!("error: archive run failed: {e:#}"); } false }
                _ = term.recv() => true,
                _ = int.recv() => true,
            };
            if stop {
                break;
            }
            continue;
        }
        let Some(location) = settings.backup.location.as_ref() else {
            continue;
        };
        next_backup = Some(tokio::time::Instant::now() + settings.backup.interval);
        // A signal during a cycle lets it finish: dropping it mid-way would leave multipart uploads
        // unaborted and a blocking export writing into a deleted staging directory. A second signal
        // exits at once; what that interrupts lists as incomplete and is cleaned up by later cycles.
        let started = std::time::Instant::now();
        let cycle = backup_once(settings, location);
        tokio::pin!(cycle);
        let mut stopping = false;
        let outcome = loop {
            tokio::select! {
                r = &mut cycle => break r,
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if stopping {
                std::process::exit(130);
            }
            stopping = true;
            eprintln!("stopping after the current backup cycle (signal again to stop now)");
        };
        let next_at = Timestamp::now() + settings.backup.interval;
        // Metrics first, then the status file: whoever sees the file finds the metrics current.
        if let Some(m) = &monitor {
            m.backup(
                outcome.as_ref().map_err(|e| format!("{e:#}")),
                started.elapsed(),
                next_at,
            );
            if outcome.is_ok()
                && let Ok(storage) = Storage::open_existing(location, &settings.s3).await
                && let Ok(catalog) = Catalog::load(&storage).await
            {
                m.snapshots(&catalog);
            }
        }
        status.record(settings, &outcome, Some(next_at));
        match &outcome {
            Ok(report) => print_report(report),
            Err(e) => eprintln!("error: backup cycle failed: {e:#}"),
        }
        if stopping {
            break;
        }
    }
    println!("backup scheduler stopped");
    Ok(())
}

/// Progress bars (files and bytes per database) for a person at a terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Bars {
    /// Bars when stdout is a terminal; `None` otherwise, leaving plain logs.
    fn for_terminal() -> Option<std::sync::Arc<Self>> {
        std::io::IsTerminal::is_terminal(&std::io::stdout()).then(|| {
            std::sync::Arc::new(Bars {
                multi: indicatif::MultiProgress::new(),
                bars: std::sync::Mutex::default(),
            })
        })
    }
}

impl hitkeep_backup::Progress for Bars {
    fn upload_started(&self, database: hitkeep_backup::Database, files: usize, bytes: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(bytes));
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:<46} {bar:30} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(database.folder());
        bar.set_message(format!("{files} files"));
        bar.set_length(bytes);
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(database.folder(), bar);
        }
    }

    fn file_uploaded(&self, database: hitkeep_backup::Database, _name: &str, bytes: u64) {
        if let Some(bar) = self
            .bars
            .lock()
            .ok()
            .and_then(|b| b.get(&database.folder()).cloned())
        {
            bar.inc(bytes);
        }
    }

    fn upload_finished(&self, database: hitkeep_backup::Database) {
        if let Some(bar) = self
            .bars
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&database.folder()))
        {
            bar.finish_with_message("done");
        }
    }
}
