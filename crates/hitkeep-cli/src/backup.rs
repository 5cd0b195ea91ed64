//! `hitkeep backup …`, `hitkeep serve` and `hitkeep demo`: wiring settings to hitkeep-backup.

use std::process::ExitCode;

use anyhow::Context as _;
use hitkeep_backup::{CycleReport, SnapshotState};
use hitkeep_config::Settings;
use hitkeep_data::DataLayout;
use hitkeep_service::{Engine, ErrorKind, StatusBoard};
use jiff::Timestamp;

use crate::EXIT_USAGE;

/// A runtime failure, already reported: exit 1.
pub const EXIT_FAILURE: u8 = 1;

/// The engine for these settings: the binary opens the database files itself.
pub(crate) fn engine(settings: &Settings) -> Engine {
    Engine::new(settings.clone())
}

/// The data layout, opening databases with the configured DuckDB limits.
pub(crate) fn layout(settings: &Settings) -> DataLayout {
    engine(settings).layout().clone()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// Prints an error with its causes and its hint, and returns exit status 1.
pub fn fail(e: &anyhow::Error) -> ExitCode {
    crate::report::print_error(e);
    ExitCode::from(EXIT_FAILURE)
}

/// Prints a service error; a configuration error exits 2, anything else 1.
pub fn fail_service(e: &hitkeep_service::Error) -> ExitCode {
    eprintln!("error: {}", crate::report::render(e));
    match e.kind() {
        ErrorKind::Config => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::from(EXIT_FAILURE),
    }
}

/// A configuration error that stops a command before it starts: exit 2.
fn usage(e: &hitkeep_service::Error) -> ExitCode {
    eprintln!("error: {}", crate::report::render(e));
    ExitCode::from(EXIT_USAGE)
}

pub fn demo(
    settings: &Settings,
    hits: u64,
    tenants: usize,
    release: hitkeep_data::TenantLayout,
) -> ExitCode {
    let started = std::time::Instant::now();
    let options = hitkeep_data::demo::DemoOptions::new(hits, tenants).with_layout(release);
    match engine(settings).create_demo(&options) {
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
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let board = StatusBoard::load(&engine.layout().status_file(), settings);
    let job = hitkeep_service::BackupJob {
        engine,
        board: std::sync::Arc::new(board),
        progress: Bars::for_terminal().map(|b| b as std::sync::Arc<dyn hitkeep_backup::Progress>),
    };
    let outcome = runtime().block_on(job.run_once());
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
        Err(e) => fail_service(&e),
    }
}

pub fn list(settings: &Settings, json: bool) -> ExitCode {
    let engine = engine(settings);
    let location = match engine.backup_location() {
        Ok(l) => l.clone(),
        Err(e) => return usage(&e),
    };
    let listing = match runtime().block_on(engine.list()) {
        Ok(l) => l,
        Err(e) => return fail_service(&e),
    };
    let (catalog, latest, forgotten) = (&listing.catalog, &listing.latest, &listing.forgotten_keys);
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
                "pinned": catalog.pins.contains(&s.id),
                "size": s.size,
                "objects": s.objects,
                // Sealed with the data in an encrypted snapshot: unknown without its identity.
                "rows": s.manifest.as_ref().filter(|m| !m.is_encrypted()).map(|m| m.total_rows()),
                "mode": s.manifest.as_ref().map(snapshot_mode),
                "encrypted_to": s.manifest.as_ref().and_then(|m| m.encryption.as_ref()).map(|e| &e.recipients),
                "tenant_key": tenant_key(s),
                "forgotten": tenant_key(s).is_some_and(|k| forgotten.contains(k)),
                "layout": s.manifest.as_ref().and_then(|m| m.layout),
                // As the cycle asked it; the bucket is the authority (`backup prune` asks it).
                "object_lock": s.manifest.as_ref().and_then(|m| m.object_lock),
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
        "{:<46} {:<20} {:<11} {:<11} {:<8} {:>12} {:>12}",
        "DATABASE", "SNAPSHOT", "STATE", "MODE", "SOURCE", "BYTES", "ROWS"
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
        let rows = match &s.manifest {
            Some(m) if m.is_encrypted() => "sealed".to_owned(),
            Some(m) => m.total_rows().to_string(),
            None => "-".to_owned(),
        };
        let mut mark = match s.manifest.as_ref().and_then(|m| m.layout) {
            Some(layout) if db.database == hitkeep_backup::Database::Shared => {
                format!("  {layout}")
            }
            _ => String::new(),
        };
        if db.database == hitkeep_backup::Database::Shared && latest.contains(&s.id) {
            mark.push_str("  <- latest");
        }
        match tenant_key(s) {
            Some(k) if forgotten.contains(k) => {
                mark.push_str("  (encrypted, forgotten: opens no more)")
            }
            Some(_) => mark.push_str("  (encrypted to the tenant's key)"),
            None if s.manifest.as_ref().is_some_and(|m| m.is_encrypted()) => {
                mark.push_str("  (encrypted)")
            }
            None => {}
        }
        if catalog.pins.contains(&s.id) {
            mark.push_str("  (pinned)");
        }
        if let Some(lock) = s.manifest.as_ref().and_then(|m| m.object_lock) {
            mark.push_str(&format!(
                "  (locked until {})",
                lock.retain_until.strftime("%Y-%m-%d %H:%M UTC")
            ));
        }
        if s.in_future() {
            mark.push_str("  (in the future: written by a clock set ahead?)");
        }
        let source = s.source.map_or_else(|| "-".to_owned(), |s| s.short());
        let mode = s.manifest.as_ref().map_or("-", snapshot_mode);
        println!(
            "{:<46} {:<20} {:<11} {:<11} {:<8} {:>12} {:>12}{mark}",
            db.database.folder(),
            s.id.to_string(),
            state,
            mode,
            source,
            s.size,
            rows
        );
    }
    ExitCode::SUCCESS
}

/// `full` or `incremental`: what restoring it needs (an incremental snapshot's table files are in
/// the pool, shared with other snapshots).
fn snapshot_mode(manifest: &hitkeep_backup::Manifest) -> &'static str {
    if manifest.is_incremental() {
        "incremental"
    } else {
        "full"
    }
}

/// `backup export-plain`: a cycle as plain folders.
pub fn export_plain(
    settings: &Settings,
    snapshot: Option<&str>,
    dir: &std::path::Path,
) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let export = match runtime().block_on(engine.export_plain(snapshot, dir)) {
        Ok(export) => export,
        Err(e) => return fail_service(&e),
    };
    println!(
        "wrote cycle {} to {}: {} databases, {} files, {} bytes, each checked against its manifest",
        export.snapshot,
        export.dir.display(),
        export.databases.len(),
        export.files,
        export.bytes
    );
    for database in &export.databases {
        println!("  {}/{}", database.folder(), export.snapshot);
    }
    for (tenant, why) in &export.missing {
        println!("  not in this cycle: tenant {tenant} ({why})");
    }
    println!(
        "each folder is read by a bare IMPORT DATABASE; the whole is also a destination (HITKEEP_BACKUP_PATH={}) of full snapshots",
        export.dir.display()
    );
    ExitCode::SUCCESS
}

/// `backup pin`: keeps a cycle whatever the retention says.
pub fn pin(settings: &Settings, snapshot: Option<&str>) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    match runtime().block_on(engine.pin(snapshot)) {
        Ok(id) => {
            println!(
                "pinned {id}: no prune deletes it (lifecycle rules expire by age and do not read pins) until `hitkeep backup unpin -snapshot {id}`"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail_service(&e),
    }
}

/// `backup unpin`: hands a cycle back to the retention.
pub fn unpin(settings: &Settings, snapshot: &str) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    match runtime().block_on(engine.unpin(snapshot)) {
        Ok(true) => {
            println!("unpinned {snapshot}: the retention decides again whether it stays");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!(
                "error: {snapshot} is not pinned\n  fix: `hitkeep backup list` marks pinned snapshots"
            );
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => fail_service(&e),
    }
}

pub fn verify(settings: &Settings, snapshot: Option<&str>, deep: bool, json: bool) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let report = match runtime().block_on(engine.verify(snapshot, deep)) {
        Ok(r) => r,
        Err(e) => return fail_service(&e),
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
            if let Some(why) = &db.not_opened {
                println!("    - not opened (stored bytes checked): {why}");
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
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let outcome = runtime().block_on(async {
        let job = engine.plan_prune().await?;
        let retention = settings.backup.retention;
        print_held(&job.plan.held);
        if job.plan.is_empty() {
            match job.plan.held.is_empty() {
                true => {
                    println!("nothing to prune: every database has at most {retention} snapshots")
                }
                false => println!("nothing else to prune"),
            }
            if dry_run {
                print_pool_plan(&job);
            } else {
                print_sweeps(&job.execute().await?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "keeping the newest {retention} snapshots per database{} in {}; deleting:",
            kept_besides(settings, !job.pins().is_empty()),
            job.location()
        );
        for d in &job.plan.deletions {
            println!(
                "  {:<46} {}  {:>12} bytes  ({})",
                d.database.folder(),
                d.id,
                d.size,
                d.reason
            );
        }
        if dry_run {
            print_pool_plan(&job);
            println!("dry run: nothing deleted");
            return Ok(ExitCode::SUCCESS);
        }
        if !yes && let Err(code) = confirm("Type \"yes\" to confirm prune: ", "prune") {
            return Ok(code);
        }
        let snapshots = job.plan.deletions.len();
        let pruned = job.execute().await?;
        println!(
            "deleted {snapshots} snapshots ({} objects); a fresh listing confirms they are gone",
            pruned.objects
        );
        print_sweeps(&pruned);
        hitkeep_service::Result::Ok(ExitCode::SUCCESS)
    });
    outcome.unwrap_or_else(|e| fail_service(&e))
}

/// The snapshots past retention that S3 Object Lock keeps: never deleted, so listed as kept.
fn print_held(held: &[hitkeep_backup::Held]) {
    if held.is_empty() {
        return;
    }
    println!("kept by S3 Object Lock although past retention (pruned once their lock ends):");
    for h in held {
        println!(
            "  {:<46} {}  {:>12} bytes  (locked until {})",
            h.database.folder(),
            h.id,
            h.size,
            h.until.strftime("%Y-%m-%d %H:%M UTC")
        );
    }
}

/// What the retention keeps besides the newest N: the period rules set, and pins.
fn kept_besides(settings: &Settings, pins: bool) -> String {
    let k = &settings.backup.keep;
    let rules = [
        ("last", k.last),
        ("hourly", k.hourly),
        ("daily", k.daily),
        ("weekly", k.weekly),
        ("monthly", k.monthly),
    ];
    let mut parts: Vec<String> = rules
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(rule, n)| format!("keep-{rule} {n}"))
        .collect();
    if pins {
        parts.push("pinned cycles".into());
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!(" (and {})", parts.join(", ")),
    }
}

/// Says what a dry run leaves out: the pool is swept only once the snapshots are gone.
fn print_pool_plan(job: &hitkeep_service::PruneJob) {
    if job.plan.sweeps_pool {
        println!(
            "the pool (table files of incremental snapshots) is swept after the deletions: objects no remaining snapshot names and older than {} h go",
            hitkeep_backup::POOL_GRACE.as_hours()
        );
    }
}

/// Says what a prune removed from the pool and of the partial uploads killed runs left.
fn print_sweeps(pruned: &hitkeep_service::Pruned) {
    if let Some(pool) = &pruned.pool {
        println!(
            "pool: {} objects, {} named by snapshots; removed {} unused ({} bytes); {} unused but younger than {} h kept (a running cycle may name them)",
            pool.objects,
            pool.referenced,
            pool.removed,
            pool.removed_bytes,
            pool.young,
            hitkeep_backup::POOL_GRACE.as_hours()
        );
        if pool.locked > 0 {
            println!(
                "pool: {} unused objects kept by S3 Object Lock; a prune after their locks end removes them",
                pool.locked
            );
        }
    }
    if let Some(report) = pruned.partial.as_ref().filter(|r| !r.removed.is_empty()) {
        println!(
            "removed {} partial upload(s) left by killed runs ({} bytes)",
            report.removed.len(),
            report.bytes_removed()
        );
    }
}

/// Asks on stdin before something destructive. Only the exact answer `yes` goes on; any other
/// answer aborts (exit 1: a script must not read "nothing happened" as success); no input at all
/// (a cron job, stdin closed) is a usage error naming `-yes` (exit 2).
pub fn confirm(prompt: &str, what: &str) -> std::result::Result<(), ExitCode> {
    confirm_typing(prompt, what, "yes")
}

/// [`confirm`], with `expected` as the answer to type.
fn confirm_typing(prompt: &str, what: &str, expected: &str) -> std::result::Result<(), ExitCode> {
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
        Ok(_) if answer.trim() == expected => Ok(()),
        Ok(_) => {
            println!("Aborted: nothing changed.");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// The tenant key a snapshot is sealed to, if any.
fn tenant_key(s: &hitkeep_backup::SnapshotInfo) -> Option<&str> {
    s.manifest
        .as_ref()
        .and_then(|m| m.encryption.as_ref())
        .and_then(|e| e.tenant_key.as_deref())
}

pub fn forget_tenant(
    settings: &Settings,
    tenant: uuid::Uuid,
    yes: bool,
    dry_run: bool,
) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let outcome = runtime().block_on(async {
        let job = engine.plan_forget_tenant(tenant).await?;
        print_forget_plan(&job);
        if job.plan.is_empty() {
            // Done before, and nothing left readable: a script asking again succeeds. Otherwise
            // nothing was erased (a wrong UUID, or tenant keys never on), which is a failure.
            let done_before = !job.plan.forgotten_before.is_empty() && job.plan.readable.is_empty();
            if !done_before {
                eprintln!(
                    "error: tenant {tenant} has no key file to delete: nothing was made unreadable\n  hint: check the UUID (`hitkeep backup list`); snapshots written without HITKEEP_BACKUP_TENANT_KEYS are erased only by deleting them"
                );
                return Ok(ExitCode::from(EXIT_FAILURE));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if dry_run {
            println!("dry run: nothing deleted");
            return Ok(ExitCode::SUCCESS);
        }
        let prompt = format!("Type the tenant's UUID ({tenant}) to forget it: ");
        if !yes && let Err(code) = confirm_typing(&prompt, "forget-tenant", &tenant.to_string()) {
            return Ok(code);
        }
        let deleted = job.execute().await?;
        println!(
            "forgot tenant {tenant}: deleted {deleted} key file(s); a fresh look confirms they are gone"
        );
        hitkeep_service::Result::Ok(ExitCode::SUCCESS)
    });
    outcome.unwrap_or_else(|e| fail_service(&e))
}

/// What a forget deletes, what it makes unreadable, and what it does not erase.
fn print_forget_plan(job: &hitkeep_service::ForgetJob) {
    let plan = &job.plan;
    let tenant = plan.tenant;
    let ids = |ids: &[hitkeep_backup::SnapshotId]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if plan.is_empty() {
        println!(
            "tenant {tenant} has no key file in {}: nothing to forget",
            job.location()
        );
    } else {
        println!(
            "forgetting tenant {tenant} in {} deletes its key file(s):",
            job.location()
        );
        for key in &plan.keys {
            println!("  {key}");
        }
        println!(
            "{} snapshot(s) of the tenant become unreadable to everyone, the operator included: {}",
            plan.unreadable.len(),
            ids(&plan.unreadable)
        );
    }
    if !plan.forgotten_before.is_empty() {
        println!(
            "{} snapshot(s) were unreadable already (key forgotten before): {}",
            plan.forgotten_before.len(),
            ids(&plan.forgotten_before)
        );
    }
    if !plan.readable.is_empty() {
        println!(
            "! {} snapshot(s) of the tenant are not sealed to a key of its own and stay readable (written before HITKEEP_BACKUP_TENANT_KEYS): {}; prune or delete them to erase them",
            plan.readable.len(),
            ids(&plan.readable)
        );
    }
    println!(
        "not erased: the live database, restores and export-plain copies, copies of the key files, older versions a versioned bucket keeps (delete those too), and the tenant's UUID in object names"
    );
    if job.live {
        println!(
            "! the tenant still has a database on this host: its next backup is sealed to a new key, readable again"
        );
    }
}

pub fn rewrap(settings: &Settings, yes: bool, dry_run: bool) -> ExitCode {
    let engine = engine(settings);
    if let Err(e) = engine.backup_location() {
        return usage(&e);
    }
    let outcome = runtime().block_on(async {
        let job = match engine.plan_rewrap().await {
            Err(e) if e.kind() == ErrorKind::Config => return Ok(usage(&e)),
            job => job?,
        };
        let to = job.plan.to.join(", ");
        if job.plan.keys.is_empty() {
            println!(
                "{} tenant key file(s) in {}, all sealed to {to} already: nothing to rewrap",
                job.plan.unchanged,
                job.location()
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!("sealing {} tenant key file(s) in {} to {to}:", job.plan.keys.len(), job.location());
        for key in &job.plan.keys {
            println!("  {}  (tenant {}, now sealed to {})", key.object, key.tenant, key.from.join(", "));
        }
        println!(
            "the snapshots are not touched: those sealed to the old recipients (the shared database's, and tenants' without keys of their own) still open only with the old identity"
        );
        if dry_run {
            println!("dry run: nothing written");
            return Ok(ExitCode::SUCCESS);
        }
        if !yes && let Err(code) = confirm("Type \"yes\" to confirm rewrap: ", "rewrap") {
            return Ok(code);
        }
        let written = job.execute().await?;
        println!("rewrapped {written} key file(s); each read back as written");
        hitkeep_service::Result::Ok(ExitCode::SUCCESS)
    });
    outcome.unwrap_or_else(|e| fail_service(&e))
}

pub fn lifecycle(settings: &Settings) -> ExitCode {
    let rules = match engine(settings).lifecycle_rules() {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    println!("{:#}", rules.rules);
    eprintln!(
        "# {} snapshots every {} min cover {} min; objects expire after {} days.\n# Caution: expiry goes by age, not count. If backups stop for {} days, every snapshot expires; watch `hitkeep backup status`.\n# pool/ and pool-e/ (the table files incremental snapshots share, plain and encrypted) must never expire by age: the rules leave them out, and each cycle removes the objects no snapshot names.\n# Apply with: aws s3api put-bucket-lifecycle-configuration --bucket {} --lifecycle-configuration file://lifecycle.json",
        settings.backup.retention,
        settings.backup.interval.as_secs() / 60,
        rules.covered_minutes,
        rules.days,
        rules.days,
        rules.bucket
    );
    if let Some(lock) = settings.backup.object_lock {
        eprintln!(
            "# Object Lock keeps each snapshot {} days: expiry waits at least a day past that (an earlier one would only hide a locked snapshot behind a delete marker). A locked bucket is versioned: hitkeep-backup-old-versions removes what deletes leave (snapshots pruned, pool objects swept, forgotten tenant keys) a day later, once unlocked; keep that rule even with HITKEEP_BACKUP_KEEP_* rules.",
            lock.days
        );
    }
    if !settings.backup.keep.is_empty() {
        eprintln!(
            "# HITKEEP_BACKUP_KEEP_* rules and pins are not lifecycle rules: expiry by age would delete the daily, weekly and monthly cycles they keep. With them, skip these rules and set HITKEEP_BACKUP_PRUNE_S3=true."
        );
    }
    ExitCode::SUCCESS
}

pub fn keygen(file: &std::path::Path) -> ExitCode {
    match hitkeep_backup::write_new_identity(file) {
        Ok(public) => {
            println!("{public}");
            eprintln!(
                "# wrote the private key to {}: keep it (and a copy) off the HitKeep host; restore, `backup verify --deep` and `backup export-plain` need it as HITKEEP_BACKUP_IDENTITY_FILE.\n# on the HitKeep host: HITKEEP_BACKUP_RECIPIENTS={public}",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} exists already: hitkeep never replaces a key file, which may be the only key that opens older snapshots\n  hint: name a new file",
                file.display()
            );
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

pub fn status(settings: &Settings, json: bool) -> ExitCode {
    let engine = engine(settings);
    let status = StatusBoard::load(&engine.layout().status_file(), settings).get();
    if json {
        println!("{:#}", serde_json::to_value(&status).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let time = |t: Option<Timestamp>| show(t.map(|t| t.to_string()));
    println!("enabled:              {}", status.enabled);
    println!("destination:          {}", show(status.destination.clone()));
    println!(
        "last backup:          {} ({})",
        time(status.last_backup),
        show(status.last_snapshot.clone())
    );
    println!("layout:               {}", show(status.last_layout.clone()));
    for skipped in &status.last_skipped {
        println!("skipped tenant:       {skipped}");
    }
    println!("next backup:          {}", time(status.next_backup));
    println!("last failure:         {}", time(status.last_failed_at));
    println!("last error:           {}", show(status.last_error.clone()));
    println!("consecutive failures: {}", status.consecutive_failures);
    ExitCode::SUCCESS
}

/// The scheduler: jobs one after another (never overlapping), until SIGINT or SIGTERM. The first
/// signal lets the running job end (a cycle finishes, an archive run stops after its site); a second
/// exits at once, and what that interrupts lists as incomplete and is cleaned up by later cycles.
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
        Ok(()) => {
            println!("backup scheduler stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

async fn schedule(settings: &Settings) -> anyhow::Result<()> {
    use std::sync::Arc;
    let engine = engine(settings);
    let clock: Arc<dyn hitkeep_service::Clock> = Arc::new(hitkeep_service::SystemClock);
    let board = Arc::new(StatusBoard::load(&engine.layout().status_file(), settings));
    if let Some(addr) = settings.http_addr {
        hitkeep_service::monitor::serve(addr, board.clone(), clock.clone())
            .await
            .with_context(|| format!("serving HITKEEP_HTTP_ADDR {addr}"))?;
    }
    let shutdown = shutdown_on_signals()?;
    engine
        .scheduler(clock, board)
        .run(shutdown, |run| print_finished(&run))
        .await;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
fn shutdown_on_signals() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("stopping after the current job (signal again to stop now)");
        let _ = tx.send(());
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
    Ok(async move {
        let _ = rx.await;
    })
}

/// What the scheduler's log says about a finished job.
fn print_finished(run: &hitkeep_service::Finished) {
    use hitkeep_service::{JobKind, JobReport};
    match (run.kind, &run.outcome) {
        (_, Ok(JobReport::Backup(report))) => print_report(report),
        (_, Ok(JobReport::Archive(archive))) => {
            for site in &archive.sites {
                match site {
                    Ok(r) if r.file.is_some() => println!(
                        "archived {} rows of site {}",
                        r.counts.values().sum::<u64>(),
                        r.policy.site_id
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!(
                            "error: archiving a site failed: {}",
                            crate::report::render(e)
                        );
                    }
                }
            }
            if archive.not_started > 0 {
                eprintln!(
                    "{} site(s) not archived: stopped for shutdown; the next run archives them",
                    archive.not_started
                );
            }
        }
        (_, Ok(_)) => {}
        (JobKind::Backup, Err(e)) => {
            eprintln!("error: backup cycle failed: {}", crate::report::render(e));
        }
        (_, Err(e)) => {
            eprintln!(
                "error: {} run failed: {}",
                run.kind,
                crate::report::render(e)
            );
        }
    }
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
