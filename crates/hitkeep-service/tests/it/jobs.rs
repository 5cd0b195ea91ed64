//! The engine's jobs on real DuckDB data and a real local destination, run by the scheduler and
//! recorded in the one status record; and the same backup from inside a process that holds the
//! databases, as an embedding server does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duckdb::Connection;
use hitkeep_config::{Config, Settings, Sources};
use hitkeep_data::{HeldDatabases, TenantLayout};
use hitkeep_service::{
    ArchiveJob, BackupJob, Engine, JobKind, JobReport, Scheduler, StatusBoard, SystemClock,
};

fn settings(dir: &Path, backup: &str) -> Settings {
    settings_with(dir, backup, &[])
}

fn settings_with(dir: &Path, backup: &str, more: &[(&str, String)]) -> Settings {
    let mut env = vec![
        (
            "HITKEEP_DB_PATH",
            dir.join("hitkeep.db").display().to_string(),
        ),
        ("HITKEEP_DATA_PATH", dir.join("data").display().to_string()),
        ("HITKEEP_BACKUP_PATH", backup.to_owned()),
        (
            "HITKEEP_ARCHIVE_PATH",
            dir.join("archive").display().to_string(),
        ),
    ];
    env.extend(more.iter().cloned());
    let sources = Sources::with_env(env.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Config::load(&sources).expect("valid settings").settings
}

fn demo(engine: &Engine) {
    let options = hitkeep_data::demo::DemoOptions::new(3_000, 1);
    hitkeep_data::demo::generate(engine.layout(), &options).expect("demo data");
}

/// Demo data under a new temp dir, backed up to its `backups/` folder.
fn local_setup() -> (tempfile::TempDir, PathBuf, Settings, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let settings = settings(dir.path(), &backups.display().to_string());
    let engine = Engine::new(settings.clone());
    demo(&engine);
    (dir, backups, settings, engine)
}

/// Every database of `layout` opened for writing, as a HitKeep server holds them.
fn open_all(layout: &hitkeep_data::DataLayout) -> Vec<(PathBuf, Connection)> {
    let mut paths = vec![layout.db_path.clone()];
    paths.extend(layout.tenant_files().unwrap().into_iter().map(|(_, p)| p));
    paths
        .into_iter()
        .map(|p| {
            let conn = Connection::open(&p).unwrap();
            (p, conn)
        })
        .collect()
}

/// Runs a backup and an archive run through the scheduler, then stops it.
async fn run_both(engine: &Engine, board: Arc<StatusBoard>) -> Vec<(JobKind, bool)> {
    let backup = BackupJob {
        engine: engine.clone(),
        board: board.clone(),
        progress: None,
    };
    let archive = ArchiveJob {
        engine: engine.clone(),
        board,
    };
    let scheduler = Scheduler::new(Arc::new(SystemClock))
        .add(Arc::new(backup), Duration::ZERO, Duration::from_secs(3600))
        .add(Arc::new(archive), Duration::ZERO, Duration::from_secs(3600));
    let (done, stop) = tokio::sync::oneshot::channel::<()>();
    let mut done = Some(done);
    let mut seen = Vec::new();
    scheduler
        .run(
            async {
                let _ = stop.await;
            },
            |f| {
                if let Err(e) = &f.outcome {
                    eprintln!("{} failed: {}", f.kind, hitkeep_service::describe(e));
                }
                let ok = matches!(
                    (&f.kind, &f.outcome),
                    (JobKind::Backup, Ok(JobReport::Backup(r))) if r.is_success()
                ) || matches!(
                    (&f.kind, &f.outcome),
                    (JobKind::Archive, Ok(JobReport::Archive(_)))
                );
                seen.push((f.kind, ok));
                if seen.len() == 2 {
                    let _ = done.take().map(|d| d.send(()));
                }
            },
        )
        .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_record_one_status_that_every_reader_shares() {
    let (_dir, _, settings, engine) = local_setup();
    let status_file = engine.layout().status_file();
    let board = Arc::new(StatusBoard::load(&status_file, &settings));

    let seen = run_both(&engine, board.clone()).await;
    assert_eq!(
        seen,
        vec![(JobKind::Backup, true), (JobKind::Archive, true)]
    );

    let status = board.get();
    let listing = engine.list().await.unwrap();
    let latest = listing
        .latest
        .first()
        .expect("a committed cycle")
        .to_string();
    assert_eq!(status.last_snapshot.as_deref(), Some(latest.as_str()));
    assert!(status.last_backup.is_some() && status.last_error.is_none());
    assert!(status.next_backup.is_some());
    assert_eq!(status.snapshots.get("shared"), Some(&1));
    assert!(status.totals.uploaded_bytes > 0 && status.totals.uploaded_files > 0);
    assert!(status.last_archive.is_some());
    // The file holds the same record the board serves.
    assert_eq!(
        hitkeep_service::status::read(&status_file),
        Some(status.clone())
    );
    let health = status.health(jiff::Timestamp::now());
    assert!(health.ok, "{}", health.reason);
    let json = status.hitkeep_json();
    assert_eq!(json["enabled"], true);
    assert_eq!(json["recent_failures"], 0);
    assert!(json["last_backup"].is_string() && json["next_backup"].is_string());
}

/// The status counts the snapshots retention left: the clean-up's own listing, less what it pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_what_retention_left() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups").display().to_string();
    let settings = settings_with(
        dir.path(),
        &backups,
        &[("HITKEEP_BACKUP_RETENTION", "2".to_owned())],
    );
    let engine = Engine::new(settings.clone());
    demo(&engine);
    let board = Arc::new(StatusBoard::load(&engine.layout().status_file(), &settings));
    let job = BackupJob {
        engine: engine.clone(),
        board: board.clone(),
        progress: None,
    };
    for _ in 0..3 {
        job.run_once().await.unwrap();
    }
    let listed = engine.list().await.unwrap();
    assert_eq!(listed.latest.len(), 1);
    let status = board.get();
    assert_eq!(
        status.snapshots.get("shared"),
        Some(&2),
        "{:?}",
        status.snapshots
    );
    let tenants: Vec<_> = status
        .snapshots
        .iter()
        .filter(|(folder, _)| folder.starts_with("tenants/"))
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|(_, n)| **n == 2),
        "{tenants:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cycle_is_recorded_once_with_its_reason_and_notified() {
    let dir = tempfile::tempdir().unwrap();
    // A destination below a regular file cannot be created.
    std::fs::write(dir.path().join("not-a-dir"), b"x").unwrap();
    let backup = dir.path().join("not-a-dir/backups");
    let (monitor, base) = crate::notify::Monitor::start(&[]).await;
    let urls = [
        ("HITKEEP_BACKUP_HEARTBEAT_URL", format!("{base}/ping/ok")),
        ("HITKEEP_BACKUP_FAILURE_URL", format!("{base}/ping/fail")),
    ];
    let settings = settings_with(dir.path(), &backup.display().to_string(), &urls);
    let engine = Engine::new(settings.clone());
    demo(&engine);
    let board = Arc::new(StatusBoard::load(&engine.layout().status_file(), &settings));
    let job = BackupJob {
        engine,
        board: board.clone(),
        progress: None,
    };
    let err = job
        .run_once()
        .await
        .expect_err("the destination cannot be created");
    let status = board.get();
    assert_eq!(status.consecutive_failures, 1);
    assert_eq!(status.recent_failures, 1);
    assert_eq!(status.totals.backup_failures, 1);
    let recorded = status.last_error.clone().unwrap();
    assert_eq!(recorded, err.summary());
    assert!(recorded.contains("not-a-dir"), "{recorded}");
    let health = status.health(jiff::Timestamp::now());
    assert!(!health.ok);
    assert!(health.reason.contains(&recorded), "{}", health.reason);
    assert_eq!(status.hitkeep_json()["last_error"], recorded.as_str());
    // The failure URL got the same reason; the heartbeat was not pinged.
    let seen = monitor.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/ping/fail")
    );
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["job"], "backup");
    assert_eq!(body["consecutive_failures"], 1);
    assert!(
        recorded.starts_with(body["error"].as_str().unwrap()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_cycle_pings_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, base) = crate::notify::Monitor::start(&[]).await;
    let urls = [
        ("HITKEEP_BACKUP_HEARTBEAT_URL", format!("{base}/ping/ok")),
        ("HITKEEP_BACKUP_FAILURE_URL", format!("{base}/ping/fail")),
    ];
    let backups = dir.path().join("backups").display().to_string();
    let settings = settings_with(dir.path(), &backups, &urls);
    let engine = Engine::new(settings.clone());
    demo(&engine);
    let board = Arc::new(StatusBoard::load(&engine.layout().status_file(), &settings));
    let job = BackupJob {
        engine,
        board,
        progress: None,
    };
    job.run_once().await.expect("a committed cycle");
    let seen = monitor.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/ping/ok")
    );
}

/// A server's open databases, lent to the engine by path.
struct Server {
    open: Mutex<Vec<(PathBuf, Connection)>>,
}

impl HeldDatabases for Server {
    fn connect(&self, path: &Path) -> Option<Result<Connection, duckdb::Error>> {
        let open = self.open.lock().unwrap();
        open.iter()
            .find(|(p, _)| p == path)
            .map(|(_, conn)| conn.try_clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_engine_backs_up_the_databases_its_server_holds() {
    let (_dir, _, settings, standalone) = local_setup();
    // The "server" opens every database for writing, as HitKeep does.
    let open = open_all(standalone.layout());
    let databases = open.len();
    let server = Arc::new(Server {
        open: Mutex::new(open),
    });

    // Opening the files beside the server is refused, naming this very process as the holder.
    let err = standalone
        .backup(None)
        .await
        .expect_err("the server holds the files");
    assert_eq!(err.kind(), hitkeep_service::ErrorKind::InUse, "{err}");

    let embedded = Engine::embedded(settings, server.clone());
    let report = embedded.backup(None).await.expect("an embedded cycle");
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.shared.tenants.len(), databases - 1);
    // The server's connections still work and see their data.
    let open = server.open.lock().unwrap();
    let hits: i64 = open[0]
        .1
        .query_row("SELECT count(*) FROM sites", [], |r| r.get(0))
        .unwrap();
    assert!(hits > 0);
}

fn count_hits(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM main.hits", [], |r| r.get(0))
        .unwrap()
}

/// A backup taken while the server ingests through its own connections: ingest goes on during the
/// cycle, and the snapshot holds exactly the rows of one moment between the cycle's start and end,
/// which a restore brings back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_under_live_ingest_is_consistent_and_ingest_goes_on() {
    let (_dir, backups, settings, standalone) = local_setup();
    let layout = standalone.layout().clone();
    let open = open_all(&layout);
    // Every tenant database ingests; the first one with hits is checked.
    let (hot_path, hot) = open
        .iter()
        .find(|(_, c)| count_hits(c) > 0)
        .map(|(p, c)| (p.clone(), c.try_clone().unwrap()))
        .expect("a database with hits");
    let server = Arc::new(Server {
        open: Mutex::new(open),
    });

    // The ingest task: batches of 50 new hits, one transaction each, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingest = {
        let (conn, stop) = (hot.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut batches = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                conn.execute_batch(
                    "INSERT INTO hits SELECT * REPLACE (uuidv7() AS id, now() AS timestamp) FROM hits LIMIT 50",
                )
                .unwrap();
                batches += 1;
            }
            batches
        })
    };
    let before = count_hits(&hot);
    let embedded = Engine::embedded(settings, server.clone());
    let report = embedded.backup(None).await.expect("a cycle under ingest");
    let after = count_hits(&hot);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let batches = ingest.join().unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(
        batches > 0 && after > before,
        "ingest went on during the cycle"
    );

    // The snapshot's count of the hot database is one moment's: between the counts around the cycle.
    let tenant = layout
        .tenant_files()
        .unwrap()
        .into_iter()
        .find(|(_, p)| *p == hot_path)
        .map(|(id, _)| id);
    let listing = embedded.list().await.unwrap();
    let database = match tenant {
        Some(tenant_id) => hitkeep_backup::Database::Tenant { tenant_id },
        None => hitkeep_backup::Database::Shared,
    };
    let snapshot = listing
        .catalog
        .snapshots(database)
        .iter()
        .find(|s| s.id == report.id)
        .and_then(|s| s.manifest.clone())
        .expect("the hot database's manifest");
    let in_snapshot = i64::try_from(snapshot.tables["hits"]).unwrap();
    assert!(
        before <= in_snapshot && in_snapshot <= after,
        "{before} <= {in_snapshot} <= {after}"
    );

    // Restored elsewhere, it holds exactly that many hits.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = Engine::new(settings_with(
        elsewhere.path(),
        &backups.display().to_string(),
        &[],
    ));
    let from: hitkeep_config::Location = backups.display().to_string().parse().unwrap();
    let job = hitkeep_service::restore::plan(
        &target,
        &from,
        Some(report.id),
        None,
        &hitkeep_backup::RestoreSelection::new(false, Vec::new()),
    )
    .await
    .expect("a restore plan");
    job.execute(1).await.expect("a restore");
    let restored_path = match tenant {
        Some(t) => target.layout().tenant_db(t),
        None => target.layout().db_path.clone(),
    };
    let restored = Connection::open(&restored_path).unwrap();
    assert_eq!(count_hits(&restored), in_snapshot);
}

/// A server that rewrites old rows in place, each rewrite under the shared side of a lock whose
/// exclusive side it lends to the archive's delete; at every pause it queues a rewrite of every hit.
struct RewritingServer {
    server: Server,
    rewrites: Arc<std::sync::RwLock<()>>,
    /// Per pause: hits when it began, hits when it ended, and hits the queued rewrite changed.
    pauses: Mutex<Vec<(i64, i64, usize)>>,
}

/// One pause: the lock, and the rewrite waiting for it.
struct Pause<'a> {
    server: &'a RewritingServer,
    path: PathBuf,
    before: i64,
    held: Option<std::sync::RwLockWriteGuard<'a, ()>>,
    rewrite: Option<std::thread::JoinHandle<usize>>,
}

impl HeldDatabases for RewritingServer {
    fn connect(&self, path: &Path) -> Option<Result<Connection, duckdb::Error>> {
        self.server.connect(path)
    }

    fn pause_rewrites(&self, path: &Path) -> Box<dyn hitkeep_data::Paused + '_> {
        let held = self.rewrites.write().unwrap();
        let conn = self.connect(path).unwrap().unwrap();
        let before = count_hits(&conn);
        let lock = self.rewrites.clone();
        let rewrite = std::thread::spawn(move || {
            let _shared = lock.read().unwrap();
            conn.execute("UPDATE hits SET path = path || '#rewritten'", [])
                .unwrap()
        });
        Box::new(Pause {
            server: self,
            path: path.to_owned(),
            before,
            held: Some(held),
            rewrite: Some(rewrite),
        })
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let changed = self.rewrite.take().unwrap().join().unwrap();
        let after = count_hits(&self.server.connect(&self.path).unwrap().unwrap());
        let mut pauses = self.server.pauses.lock().unwrap();
        pauses.push((self.before, after, changed));
    }
}

/// DuckDB lets an in-place UPDATE and a DELETE of the same row both commit (duckdb/duckdb#17223): an
/// embedded archive holds the server's rewrites back from before its delete's transaction to after
/// its commit, so a rewrite queued meanwhile changes only rows that stay, and none is lost with an
/// archived row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_archive_holds_back_in_place_rewrites_through_its_delete() {
    // Both layouts: the default tenant's sites in the shared database, and in a database of its own.
    for layout in [TenantLayout::PreSplit, TenantLayout::Split] {
        archive_beside_rewrites(layout).await;
    }
}

async fn archive_beside_rewrites(layout: TenantLayout) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(
        dir.path(),
        &dir.path().join("backups").display().to_string(),
    );
    let standalone = Engine::new(settings.clone());
    let options = hitkeep_data::demo::DemoOptions::new(3_000, 1).with_layout(layout);
    hitkeep_data::demo::generate(standalone.layout(), &options).expect("demo data");
    let server = Arc::new(RewritingServer {
        server: Server {
            open: Mutex::new(open_all(standalone.layout())),
        },
        rewrites: Arc::default(),
        pauses: Mutex::default(),
    });
    let embedded = Engine::embedded(settings, server.clone());
    let run = embedded.archive(false, None).await.expect("an archive run");
    assert!(run.sites.len() > 1, "{layout:?}: {run:?}");
    // The hits each delete took, for every site that had expired rows (in order: sites run one by one).
    let archived: Vec<i64> = run
        .sites
        .iter()
        .map(|s| s.as_ref().expect("every site archived, none refused"))
        .filter(|report| report.file.is_some())
        .map(|report| i64::try_from(report.counts.get("hits").copied().unwrap_or(0)).unwrap())
        .collect();
    let pauses = server.pauses.lock().unwrap().clone();
    assert!(!archived.is_empty(), "{run:?}");
    assert_eq!(
        pauses.len(),
        archived.len(),
        "one pause per delete: {pauses:?}"
    );
    for ((before, after, changed), hits) in pauses.iter().zip(&archived) {
        // Every archived hit was there when the pause began and gone before it ended.
        assert_eq!(before - after, *hits, "{pauses:?}");
        // The rewrite waited for the commit: it changed the hits that stay, and no archived one.
        assert_eq!(i64::try_from(*changed).unwrap(), *after, "{pauses:?}");
    }
}
