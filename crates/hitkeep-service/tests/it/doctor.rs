//! `doctor::run` on real DuckDB demo data, against a local destination and the in-process S3 server:
//! which checks run and how each comes out, including a database held by this process, as an
//! embedding server holds it, with and without lending it to the engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use duckdb::Connection;
use hitkeep_config::{Config, Settings, Sources};
use hitkeep_data::HeldDatabases;
use hitkeep_service::Engine;
use hitkeep_service::doctor::{self, CredentialHints, Outcome, Report};
use hitkeep_storage::ListMode;
use hitkeep_testkit::{BUCKET, S3Server, ServerOptions};

fn settings(dir: &Path, extra: Vec<(String, String)>) -> Settings {
    let path = |p: &str| dir.join(p).display().to_string();
    let mut env = vec![
        ("HITKEEP_DB_PATH".to_owned(), path("hitkeep.db")),
        ("HITKEEP_DATA_PATH".to_owned(), path("data")),
        ("HITKEEP_BACKUP_PATH".to_owned(), path("backups")),
        ("HITKEEP_ARCHIVE_PATH".to_owned(), path("archive")),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }
    Config::load(&Sources::with_env(env))
        .expect("valid settings")
        .settings
}

/// Demo data (split layout, the default tenant and one more) under `dir`.
fn demo(dir: &Path) -> hitkeep_data::demo::DemoSummary {
    let engine = Engine::new(settings(dir, Vec::new()));
    let options = hitkeep_data::demo::DemoOptions::new(2_000, 1);
    hitkeep_data::demo::generate(engine.layout(), &options).expect("demo data")
}

async fn run(engine: &Engine) -> Report {
    doctor::run(engine, 0, CredentialHints::default()).await
}

/// The outcome of the check `name`, failing the test with the whole report when it did not run.
fn outcome(report: &Report, name: &str) -> Outcome {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#?}"))
        .outcome
}

fn detail<'r>(report: &'r Report, name: &str) -> &'r str {
    &report.check(name).expect("the check ran").detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_destination_and_local_data_pass_every_check() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let engine = Engine::new(settings(dir.path(), Vec::new()));
    let report = run(&engine).await;
    assert_eq!(report.outcome(), Outcome::Ok, "{report:#?}");
    for label in ["backup", "archive"] {
        for step in [
            "open",
            "write, read back, stat",
            "clock",
            "conditional writes",
            "multipart upload",
            "paginated listing",
            "delete",
        ] {
            assert_eq!(outcome(&report, &format!("{label}: {step}")), Outcome::Ok);
        }
        // A local directory takes no integrity headers, and needs no credentials.
        assert!(
            report
                .check(&format!("{label}: integrity headers"))
                .is_none()
        );
    }
    assert!(report.check("credentials").is_none());
    let layout = engine.layout();
    assert_eq!(
        detail(&report, "data: tenant databases"),
        format!("2 readable under {}", layout.tenants_dir().display())
    );
    assert!(
        detail(&report, "data: data path")
            .starts_with(&format!("{} is writable", layout.data_path.display())),
        "{report:#?}"
    );
    assert_eq!(
        detail(&report, "data: in use"),
        "none of 3 database(s) is held by another process"
    );
    assert_eq!(
        detail(&report, "data: tenant layout"),
        "split (HitKeep 2.13): 2 tenant database(s) to back up, 0 missing"
    );
    assert_eq!(outcome(&report, "data: staging room"), Outcome::Ok);
    // The probes leave nothing behind: not on the destinations, not in the data path.
    for location in ["backups", "archive"] {
        assert_eq!(
            files_under(&dir.path().join(location)),
            Vec::<PathBuf>::new()
        );
    }
    assert!(
        !files_under(&layout.data_path)
            .iter()
            .any(|f| f.to_string_lossy().contains("doctor")),
        "the write probe is removed"
    );
}

/// Before HitKeep's first start there is no data yet: warnings that say so, and no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_yet_is_a_warning_and_backups_disabled_too() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(settings(
        dir.path(),
        vec![("HITKEEP_BACKUP_PATH".into(), String::new())],
    ));
    let report = doctor::run(&engine, 2, CredentialHints::default()).await;
    assert!(!report.failed(), "{report:#?}");
    assert_eq!(report.outcome(), Outcome::Warning);
    assert_eq!(detail(&report, "config"), "valid, with 2 warning(s)");
    assert_eq!(outcome(&report, "backup"), Outcome::Warning);
    assert!(report.check("backup: open").is_none());
    assert_eq!(outcome(&report, "archive: delete"), Outcome::Ok);
    assert_eq!(outcome(&report, "data: shared database"), Outcome::Warning);
    assert_eq!(outcome(&report, "data: data path"), Outcome::Warning);
    assert!(
        detail(&report, "data: tenant databases").starts_with("0 readable"),
        "{report:#?}"
    );
    // Nothing to ask about, and nothing read.
    assert!(report.check("data: in use").is_none());
    assert!(report.check("data: tenant layout").is_none());
    assert!(
        !engine.layout().data_path.exists(),
        "doctor creates nothing"
    );
}

/// What an embedding server lends: the databases it holds open.
struct Server(Mutex<Vec<(PathBuf, Connection)>>);

impl HeldDatabases for Server {
    fn connect(&self, path: &Path) -> Option<Result<Connection, duckdb::Error>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, conn)| conn.try_clone())
    }
}

/// Databases held open by this process, as a HitKeep server holds them: a warning naming each and
/// the way out for an engine that does not have them, and no warning (and the layout still read,
/// through the server's connection) for an engine the server lends them to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_database_is_a_warning_unless_the_engine_is_lent_it() {
    let dir = tempfile::tempdir().unwrap();
    let summary = demo(dir.path());
    let settings = settings(dir.path(), Vec::new());
    let layout = Engine::new(settings.clone()).layout().clone();
    let tenant = layout.tenant_db(summary.tenants[0]);
    let held: Vec<(PathBuf, Connection)> = [layout.db_path.clone(), tenant.clone()]
        .into_iter()
        .map(|p| {
            let conn = Connection::open(&p).unwrap();
            (p, conn)
        })
        .collect();
    let server = Arc::new(Server(Mutex::new(held)));

    let report = run(&Engine::new(settings.clone())).await;
    assert!(!report.failed(), "{report:#?}");
    let check = report.check("data: in use").expect("the check ran");
    assert_eq!(check.outcome, Outcome::Warning);
    let me = format!("this process, PID {}", std::process::id());
    assert!(
        check
            .detail
            .starts_with("2 of 3 database(s) held by another process: ")
            && check
                .detail
                .contains(&format!("{} ({me})", layout.db_path.display()))
            && check
                .detail
                .contains(&format!("{} ({me})", tenant.display())),
        "{check:#?}"
    );
    let hint = check.hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("embedded") && hint.contains("HitKeep stopped"),
        "{hint}"
    );
    // The shared database is not opened a second time in the process that holds it.
    assert_eq!(outcome(&report, "data: tenant layout"), Outcome::Warning);
    assert!(
        detail(&report, "data: tenant layout").contains(&me),
        "{report:#?}"
    );

    let embedded = Engine::embedded(settings, server.clone());
    let report = run(&embedded).await;
    assert_eq!(report.outcome(), Outcome::Ok, "{report:#?}");
    assert_eq!(
        detail(&report, "data: in use"),
        "none of 3 database(s) is held by another process"
    );
    assert_eq!(
        detail(&report, "data: tenant layout"),
        "split (HitKeep 2.13): 2 tenant database(s) to back up, 0 missing"
    );
    // The server's connections still hold their files: doctor dropped none of their locks.
    for (path, conn) in server.0.lock().unwrap().iter() {
        let holder = hitkeep_data::lock_holder(path).unwrap();
        assert!(
            holder.is_some_and(|h| h.to_string() == me),
            "{}",
            path.display()
        );
        conn.execute_batch("CREATE TABLE IF NOT EXISTS still_writable (x INTEGER)")
            .unwrap();
    }
}

async fn s3_case(options: ServerOptions) -> (Report, S3Server) {
    let server = S3Server::start_with(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let mut extra = server.hitkeep_env();
    extra.push(("HITKEEP_BACKUP_PATH".into(), format!("s3://{BUCKET}/b")));
    extra.push(("HITKEEP_ARCHIVE_PATH".into(), format!("s3://{BUCKET}/a")));
    let report = run(&Engine::new(settings(dir.path(), extra))).await;
    (report, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_destination_passes_every_check_and_leaves_nothing() {
    let (report, server) = s3_case(ServerOptions::default()).await;
    assert_eq!(report.outcome(), Outcome::Ok, "{report:#?}");
    assert_eq!(
        detail(&report, "credentials"),
        "static keys (HITKEEP_S3_ACCESS_KEY_ID / HITKEEP_S3_SECRET_ACCESS_KEY)"
    );
    for label in ["backup", "archive"] {
        for step in [
            "open",
            "integrity headers",
            "write, read back, stat",
            "clock",
            "conditional writes",
            "multipart upload",
            "paginated listing",
            "delete",
        ] {
            assert_eq!(outcome(&report, &format!("{label}: {step}")), Outcome::Ok);
        }
    }
    assert!(
        detail(&report, "backup: integrity headers").ends_with("use HITKEEP_S3_CHECKSUM=auto"),
        "{report:#?}"
    );
    let storage = server.storage("").await;
    let left = storage.list("", ListMode::Recursive).await.unwrap();
    assert!(left.is_empty(), "the _doctor/ probes are removed: {left:?}");
    assert!(server.open_uploads().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_deletes_fails_the_delete_check_with_a_hint() {
    let (report, _server) = s3_case(ServerOptions::refusing_deletes()).await;
    assert!(report.failed(), "{report:#?}");
    let check = report.check("backup: delete").expect("the check ran");
    assert_eq!(check.outcome, Outcome::Failure);
    assert!(
        check
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("s3:DeleteObject")),
        "{check:#?}"
    );
    // The local checks still ran.
    assert_eq!(outcome(&report, "data: in use"), Outcome::Ok);
}

/// Backblaze B2's answer to `x-amz-checksum-*`: a warning with the assignment to pin, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_checksum_headers_is_a_warning() {
    let (report, _server) = s3_case(ServerOptions::refusing_checksum_headers()).await;
    assert!(!report.failed(), "{report:#?}");
    assert_eq!(
        outcome(&report, "backup: integrity headers"),
        Outcome::Warning
    );
    assert!(detail(&report, "backup: integrity headers").ends_with("use HITKEEP_S3_CHECKSUM=md5"));
    assert_eq!(outcome(&report, "backup: multipart upload"), Outcome::Ok);
}

/// Every file under `dir`, recursively; none for a missing folder.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
