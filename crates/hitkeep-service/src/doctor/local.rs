//! The local checks: the data as the [`DataLayout`] places it. The shared database, the tenant
//! databases, whether the data path takes the jobs' files, whether another process holds a database,
//! room to stage a snapshot, and the tenant layout. Every path comes from the layout; nothing is
//! created but a probe file in the data path, removed at once, and databases are only read.

use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{DataError, DataLayout, Holder, LockHolder};

use super::{Outcome, Report};

/// Every local check, in the order they print.
pub(super) fn checks(layout: &DataLayout) -> Report {
    let mut report = Report::default();
    let shared = shared_database(layout, &mut report);
    let tenants = tenant_databases(layout, &mut report);
    data_path(layout, &mut report);
    let databases: Vec<(PathBuf, u64)> = shared
        .map(|size| (layout.db_path.clone(), size))
        .into_iter()
        .chain(tenants)
        .collect();
    in_use(layout, &databases, &mut report);
    staging_room(
        layout,
        databases.iter().map(|(_, size)| size).sum(),
        &mut report,
    );
    tenant_layout(layout, &mut report);
    report
}

/// The shared database's size when it can be read.
fn shared_database(layout: &DataLayout, report: &mut Report) -> Option<u64> {
    let path = &layout.db_path;
    match readable_size(path) {
        Ok(size) => {
            report.ok(
                "data: shared database",
                format!("{} is readable ({size} bytes)", path.display()),
            );
            Some(size)
        }
        Err(e) => {
            report.add(
                "data: shared database",
                Outcome::Warning,
                format!("{}: {e}", path.display()),
                Some(
                    "check HITKEEP_DB_PATH (no database yet is fine before HitKeep's first start)"
                        .into(),
                ),
            );
            None
        }
    }
}

/// The tenant databases that can be read, with their sizes.
fn tenant_databases(layout: &DataLayout, report: &mut Report) -> Vec<(PathBuf, u64)> {
    const NAME: &str = "data: tenant databases";
    let dir = layout.tenants_dir();
    let files = match layout.tenant_files() {
        Ok(files) => files,
        Err(e) => {
            report.add(
                NAME,
                Outcome::Warning,
                format!("{}: {e}", dir.display()),
                Some("run this as the user HitKeep runs as, who can read its data".into()),
            );
            return Vec::new();
        }
    };
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    for (_, path) in files {
        match readable_size(&path) {
            Ok(size) => readable.push((path, size)),
            Err(e) => unreadable.push(format!("{} ({e})", path.display())),
        }
    }
    let detail = format!("{} readable under {}", readable.len(), dir.display());
    if unreadable.is_empty() {
        report.ok(NAME, detail);
    } else {
        report.add(
            NAME,
            Outcome::Warning,
            format!("{detail}; not readable: {}", unreadable.join(", ")),
            Some("run this as the user HitKeep runs as, who can read its data".into()),
        );
    }
    readable
}

/// A database's size, once it is known to be readable: by its metadata and by the read-only
/// descriptor [`hitkeep_data::lock_holder`] opens and keeps. Never an open and close of our own: closing
/// a descriptor of a file drops every POSIX lock this process holds on it, which inside an embedding
/// server would be the server's own DuckDB lock.
fn readable_size(path: &Path) -> std::io::Result<u64> {
    let size = std::fs::metadata(path)?.len();
    match hitkeep_data::lock_holder(path) {
        Err(DataError::LockCheck { source, .. }) => Err(source),
        _ => Ok(size),
    }
}

/// Whether the jobs can write their files beside the data: the staging folders, the backup lock,
/// the status file and the installation's source id all live in the data path.
fn data_path(layout: &DataLayout, report: &mut Report) {
    const NAME: &str = "data: data path";
    let path = &layout.data_path;
    if !path.is_dir() {
        report.add(
            NAME,
            Outcome::Warning,
            format!("{} is not a directory yet", path.display()),
            Some("check HITKEEP_DATA_PATH (HitKeep creates it on its first start)".into()),
        );
        return;
    }
    // A probe file, created and removed: the only way to know, since permission bits, ACLs and
    // read-only mounts all have a say.
    match tempfile::Builder::new()
        .prefix(".hitkeep-doctor-")
        .tempfile_in(path)
    {
        Ok(_) => report.ok(
            NAME,
            format!(
                "{} is writable (staging, the backup lock and the status file go there)",
                path.display()
            ),
        ),
        Err(e) => report.add(
            NAME,
            Outcome::Failure,
            format!("{} is not writable: {e}", path.display()),
            Some("backups and archive runs stage their files and keep their lock and status under HITKEEP_DATA_PATH: let this user write there".into()),
        ),
    }
}

/// Whether another process holds any database, as DuckDB's lock says (asked of the kernel, so a
/// server in another container counts). A database this process lends to the jobs (an embedding
/// server) is not held by another.
fn in_use(layout: &DataLayout, databases: &[(PathBuf, u64)], report: &mut Report) {
    const NAME: &str = "data: in use";
    if databases.is_empty() {
        return; // nothing to back up yet: said above
    }
    let mut held = Vec::new();
    let mut unknown = Vec::new();
    for (path, _) in databases {
        match hitkeep_data::lock_holder(path) {
            Ok(None) => {}
            Ok(Some(holder)) if lent(layout, path, &holder) => {}
            Ok(Some(holder)) => held.push(format!("{} ({holder})", path.display())),
            Err(e) => unknown.push(e),
        }
    }
    let n = databases.len();
    if !held.is_empty() {
        let untold = match unknown.len() {
            0 => String::new(),
            k => format!("; cannot tell for {k} more"),
        };
        report.add(
            NAME,
            Outcome::Warning,
            format!(
                "{} of {n} database(s) held by another process: {}{untold}",
                held.len(),
                held.join(", ")
            ),
            Some("a backup cannot open a database another process holds: run backups inside the HitKeep server that holds them (embedded), or with HitKeep stopped".into()),
        );
    } else if let Some(e) = unknown.first() {
        report.add(
            NAME,
            Outcome::Warning,
            format!("cannot tell for {} of {n} database(s): {e}", unknown.len()),
            e.hint(),
        );
    } else {
        report.ok(
            NAME,
            format!("none of {n} database(s) is held by another process"),
        );
    }
}

/// A lock of this very process on a database it lends to the jobs: the embedding server's own
/// connection, which the jobs use.
fn lent(layout: &DataLayout, path: &Path, holder: &LockHolder) -> bool {
    by_this_process(holder)
        && layout
            .held
            .as_ref()
            .is_some_and(|h| h.0.connect(path).is_some())
}

fn by_this_process(holder: &LockHolder) -> bool {
    matches!(holder.who, Holder::Process { pid, .. } if pid == std::process::id())
}

/// Room on the disk that stages exports, for a snapshot of every database.
fn staging_room(layout: &DataLayout, total: u64, report: &mut Report) {
    const NAME: &str = "data: staging room";
    // The staging root may not exist before the first job: ask the nearest folder that does.
    let root = layout.staging_root();
    let mut probe = root.as_path();
    while !probe.exists() {
        probe = probe
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    match fs4::available_space(probe) {
        // An export is about half a database's size; ask for the whole size to be safe.
        Ok(free) if free >= total => report.ok(
            NAME,
            format!("{free} bytes free for snapshots of {total} bytes"),
        ),
        Ok(free) => report.add(
            NAME,
            Outcome::Failure,
            format!("{free} bytes free, the databases take {total}"),
            Some(format!(
                "free space on {} (exports are staged under HITKEEP_DATA_PATH)",
                probe.display()
            )),
        ),
        Err(e) => report.add(
            NAME,
            Outcome::Warning,
            format!("{}: {e}", probe.display()),
            None,
        ),
    }
}

/// The layout the shared database records (HitKeep 2.13's split or not) and whether every tenant a
/// cycle backs up has its database. Read-only, so it works beside a stopped server; a running one holds
/// the file, and that is reported rather than waited for.
fn tenant_layout(layout: &DataLayout, report: &mut Report) {
    const NAME: &str = "data: tenant layout";
    let db = &layout.db_path;
    if !db.is_file() {
        return; // already reported
    }
    let set = read_shared(layout, db)
        .map_err(|e| e.to_string())
        .and_then(|conn| hitkeep_data::tenant_set(&conn).map_err(|e| e.to_string()));
    let set = match set {
        Ok(set) => set,
        Err(e) => {
            let detail = format!(
                "could not read {}: {}",
                db.display(),
                e.lines().next().unwrap_or_default()
            );
            let hint = "a running HitKeep server holds its database: check the layout with the server stopped, or trust the next backup cycle's report".to_owned();
            report.add(NAME, Outcome::Warning, detail, Some(hint));
            return;
        }
    };
    let missing: Vec<(uuid::Uuid, PathBuf)> = set
        .backed_up
        .iter()
        .map(|t| (*t, layout.tenant_db(*t)))
        .filter(|(_, path)| !path.exists())
        .collect();
    let detail = format!(
        "{} (HitKeep {}): {} tenant database(s) to back up, {} missing",
        set.layout,
        set.layout.hitkeep_version(),
        set.backed_up.len(),
        missing.len()
    );
    let default_missing = missing.iter().find(|(t, _)| {
        set.layout == hitkeep_data::TenantLayout::Split && Some(*t) == set.default_tenant
    });
    if let Some((_, path)) = default_missing {
        let hint = format!(
            "the default tenant's analytics should be at {}: check HITKEEP_DATA_PATH (HitKeep will not start without this file)",
            path.display()
        );
        report.add(NAME, Outcome::Failure, detail, Some(hint));
    } else if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(t, p)| format!("{t} ({})", p.display()))
            .collect();
        let hint = format!(
            "backups skip these until HitKeep creates them on first use: {}",
            list.join(", ")
        );
        report.add(NAME, Outcome::Warning, detail, Some(hint));
    } else {
        report.ok(NAME, detail);
    }
}

/// The shared database for reading: through the embedding server's instance when it lends it,
/// otherwise read-only, which neither replays a WAL nor checkpoints into HitKeep's file. Never a
/// second instance of a file this process holds: its lock would replace this process's own (POSIX
/// locks do not conflict within a process) and its close would drop it.
fn read_shared(layout: &DataLayout, db: &Path) -> Result<Connection, DataError> {
    if let Some(lent) = layout.held.as_ref().and_then(|h| h.0.connect(db)) {
        return lent.map_err(|e| DataError::from_duckdb(db, e));
    }
    if let Some(holder) = hitkeep_data::lock_holder(db)?.filter(by_this_process) {
        return Err(DataError::Locked {
            path: db.to_owned(),
            holder: Some(holder),
        });
    }
    hitkeep_data::open_read_only(db)
}
